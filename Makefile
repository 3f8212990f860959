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

.PHONY: install demo test test-slow lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fundgap simulate --out $(DEFAULT_DATA) --reuse $(COUNTIES_ARG)
	$(BIN)/fundgap validate $(DEFAULT_DATA)
	$(BIN)/fundgap prepare $(DEFAULT_DATA) --out $(FITS)/prepared.parquet
	$(BIN)/fundgap describe $(FITS)/prepared.parquet
	@# every spec in models/: a fit that fails its diagnostics is written (marked failed),
	@# the others still run, and the demo exits non-zero at the end
	@status=0; for spec in models/*.toml; do \
		echo "== fundgap fit $$spec"; \
		$(BIN)/fundgap fit $$spec --data $(FITS)/prepared.parquet \
			--out $(FITS)/$$(basename $$spec .toml) || status=1; \
	done; \
	$(BIN)/fundgap frequentist models/*.toml --data $(FITS)/prepared.parquet \
		--out $(FITS)/frequentist --fits $(FITS) || status=1; \
	echo "fits: $(FITS)/<spec>/; comparison tables: $(FITS)/frequentist/<spec>/comparison.html (and .md)"; \
	exit $$status

test: install
	$(BIN)/python -m pytest $(FAST) $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) fits $(DEFAULT_DATA) .pytest_cache .ruff_cache
