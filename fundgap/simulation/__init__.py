"""The simulator of fundgap's default data, with known truth.

- `development`: the 2025 study's process (county development -> four mediators -> log
  amount raised), its parameters in development.toml.
- `ses`: the 2022 companion study's process (household SES, four outcomes), ses.toml.
- `placement`: where simulated campaigns sit (real or generated counties, prefectures).
- `observe`: what is measured back from the simulated latent values (donation streams,
  rater scores), with the same functions `prepare` uses.
"""
