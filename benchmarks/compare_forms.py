"""Two fits of the same spec on the same data (say the Laplace form against the explicit one
run long), quantity by quantity: the difference of posterior means in the reference fit's
posterior sds and the ratio of posterior sds, for every reported parameter (summary.csv)
and every effect and contrast (effects.csv, contrasts.csv), worst first.

    fundgap fit models/recommendation.toml --data data/default --out /tmp/explicit \\
        --form explicit --draws 5000
    fundgap fit models/recommendation.toml --data data/default --out /tmp/laplace --form laplace
    .venv/bin/python benchmarks/compare_forms.py /tmp/explicit /tmp/laplace [--top 15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = {"summary.csv": ["parameter"],
        "effects.csv": ["effect", "mediator", "channel", "outcome"],
        "contrasts.csv": ["effect", "mediator", "outcome", "contrast"]}


def quantities(folder: Path) -> pd.DataFrame:
    """Every reported quantity of one fit folder: name, mean, sd."""
    parts = []
    for file, keys in KEYS.items():
        path = folder / file
        if not path.exists():
            continue
        table = pd.read_csv(path)
        if "reported" in table:
            table = table[table["reported"]]
        keys = [k for k in keys if k in table]    # a fit without mediators or moderator
        name = table[keys].fillna("").astype(str).agg(" ".join, axis=1).str.split().str.join(" ")
        parts.append(pd.DataFrame({"quantity": file.split(".")[0] + ": " + name,
                                   "mean": table["mean"], "sd": table["sd"]}))
    return pd.concat(parts, ignore_index=True).set_index("quantity")


def compare(reference: Path, other: Path) -> pd.DataFrame:
    """The quantities both fits report, with the shift in reference sds and the sd ratio."""
    joined = quantities(reference).merge(quantities(other), left_index=True,
                                         right_index=True, suffixes=("_reference", "_other"))
    joined = joined[joined["sd_reference"] > 0]
    joined["shift_in_sds"] = (joined["mean_other"] - joined["mean_reference"]) / joined[
        "sd_reference"]
    joined["sd_ratio"] = joined["sd_other"] / joined["sd_reference"]
    return joined.sort_values("shift_in_sds", key=abs, ascending=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    table = compare(args.reference, args.other)
    print(f"{len(table)} quantities; worst |shift| {table['shift_in_sds'].abs().max():.3f} "
          f"reference sds; sd ratio {table['sd_ratio'].min():.3f} to "
          f"{table['sd_ratio'].max():.3f}; {(table['shift_in_sds'].abs() > 0.1).sum()} beyond "
          f"0.1 sd, {((table['sd_ratio'] - 1).abs() > 0.1).sum()} sd ratios beyond 10%")
    print(table.head(args.top).to_string(float_format="%.4g"))


if __name__ == "__main__":
    main()
