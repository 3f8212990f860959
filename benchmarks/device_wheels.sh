#!/usr/bin/env bash
# Wheels for a lent GPU machine that cannot reach the package index (the `device` tool):
# what fundgap needs there beyond what it already has (JAX, numpyro, numba, NumPy, SciPy,
# pandas, pyarrow, h5py, xarray, statsmodels on Python 3.12, as seen on 2026-11-24), at the
# versions of this checkout's .venv, into .whl/ (64 MiB may travel with a command; this is
# about 45 MiB).
#
#   benchmarks/device_wheels.sh [PYTHON_VERSION]        # default 3.12
#
# On the device (carry [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
#   FUNDGAP_COUNTIES=.whl/china_counties.csv python3 benchmarks/count_mediator.py ...
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${1:-3.12}"
packages=(pymc pytensor nutpie arviz arviz-base arviz-plots arviz-stats matplotlib
          pandera pydantic pydantic-core typing-inspection annotated-types typeguard
          typing-inspect mypy-extensions formulae h5netcdf xarray-einstats cons etuples
          logical-unification minikanren cachetools platformdirs threadpoolctl filelock
          arro3-core obstore zarr numcodecs donfig google-crc32c)
pins=()
for name in "${packages[@]}"; do
    version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    pins+=("${name}${version:+==$version}")
done
mkdir -p .whl
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$python_version" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any -d .whl "${pins[@]}"
cp ../shared/data/china_counties.csv .whl/ 2>/dev/null || true
du -sh .whl
