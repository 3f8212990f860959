# The two commands (README): `make demo` and `make test`. Both create .venv if missing and
# install the package into it; nothing outside the repository is needed but the package index.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COUNTIES ?= ../shared/data/china_counties.csv
DEFAULT_DATA := data/default
FITS := fits/default
COUNTIES_ARG := $(if $(wildcard $(COUNTIES)),--counties $(COUNTIES),)
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15
# `make test` runs everything but the tests marked slow (cross-checks against other engines,
# repeated-simulation coverage); `make test-slow` runs those; CI runs both.
FAST := -m "not slow"

.PHONY: install browser graphviz demo notebooks test test-slow lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install graphviz
	$(BIN)/fundgap simulate --out $(DEFAULT_DATA) --reuse $(COUNTIES_ARG)
	$(BIN)/fundgap describe $(DEFAULT_DATA)
	@# validate, prepare and fit every spec in models/ (Bayesian, frequentist, and Table 4's
	@# variants where a spec has a [robustness] table); a fit that fails its diagnostics is
	@# written (marked failed), the others still run, and the demo exits non-zero at the
	@# end; a second `make demo` skips what is current
	@status=0; \
	$(BIN)/fundgap run --data $(DEFAULT_DATA) --models models --out fits || status=1; \
	$(BIN)/fundgap report $(FITS) --out $(FITS)/report.html || status=1; \
	echo "report: $(FITS)/report.html (and report.md); fits: $(FITS)/<spec>/; index: fits/index.parquet"; \
	exit $$status

# notebooks/*.py (percent scripts) -> .ipynb, executed with full settings (reading the
# demo's fits where they exist), -> HTML beside the report.
notebooks: install
	@for source in notebooks/[0-9]*.py; do \
		name=$$(basename $$source .py); \
		$(BIN)/jupytext --to ipynb --output notebooks/$$name.ipynb $$source || exit 1; \
		$(BIN)/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=3600 \
			--output-dir $(FITS)/notebooks notebooks/$$name.ipynb || exit 1; \
	done; echo "notebooks: $(FITS)/notebooks/*.html"

# Debian packages some checks use, installed where apt-get can (as root, as on CI):
# chromium and chromium-driver render the report for its browser test (Selenium; skipped,
# saying why, without them), and Graphviz's dot draws each model's graph in the report and
# notebook 02 (the model's variables are listed instead without it).
APT_INSTALL = if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq $(1) >/dev/null) \
			|| echo "could not install $(1): $(2)"; \
	else echo "no $(1) (needs root and apt-get): $(2)"; fi

browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		{ $(call APT_INSTALL,chromium chromium-driver,the report's browser check is skipped); }

graphviz:
	@command -v dot >/dev/null 2>&1 || { $(call APT_INSTALL,graphviz,models are listed instead of drawn); }

test: install browser graphviz
	$(BIN)/python -m pytest $(FAST) $(PYTEST_ARGS)

test-slow: install browser graphviz
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) fits $(DEFAULT_DATA) .pytest_cache .ruff_cache
