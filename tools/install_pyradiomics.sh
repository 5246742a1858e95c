#!/usr/bin/env bash
# Build PyRadiomics 3.1.0 from its PyPI source archives and install it into the active Python.
#
# Why a script: PyRadiomics publishes no wheel for Python >= 3.10, and its 3.1.0 sdist is broken:
#   * pyproject.toml says version "3.0.1a1" (pip rejects `pyradiomics==3.1.0` as inconsistent);
#   * radiomics/src/cmatrices.h and radiomics/src/cshape.h are missing (they are in the 3.0.1 sdist;
#     the C sources are identical between 3.0.1 and 3.1.0);
#   * firstorder.py calls `numpy.float` (removed in NumPy 1.24) on a code path never taken by
#     segment-based extraction; patched to a plain float anyway.
# Both sdists are located by package name in pip's configured index and verified against their pinned
# sha256 by tools/fetch_sdist.py (hashlib, not pip's log); the C extensions are compiled against
# the NumPy installed in the active environment; the wheel is cached (keyed by Python and NumPy
# version) so a later run only reinstalls it, and the script exits at once when a working
# PyRadiomics 3.1.0 is already importable.
#
# Usage (from the repository root, with the project's venv active):
#     bash tools/install_pyradiomics.sh
# Environment: PYTHON (default: python), PHYJAX_PYRADIOMICS_CACHE (default: ~/.cache/phyjax/pyradiomics).
# Needs network access to PyPI, a C compiler and the Python headers the first time.
set -euo pipefail

PY="${PYTHON:-python}"
CACHE="${PHYJAX_PYRADIOMICS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phyjax/pyradiomics}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The two source archives, pinned by sha256.  Their download addresses are looked up by package
# name through pip's configured index (the same one `pip install` uses), never hard-coded.
SHA_310="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
SHA_301="47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
# Runtime dependencies of PyRadiomics (its own list: numpy, SimpleITK, PyWavelets, pykwalify, six).
DEPS=("SimpleITK>=2.2,<3" "PyWavelets>=1.4,<2" "pykwalify>=1.8,<2" "six>=1.16,<2")

check() {
  "$PY" - <<'EOF' 2>/dev/null
import radiomics, radiomics._cmatrices, radiomics._cshape  # noqa: F401  (C extensions load)
from radiomics import featureextractor  # noqa: F401
assert radiomics.__version__.lstrip("v").startswith("3.1.0"), radiomics.__version__
EOF
}

if check; then
  echo "pyradiomics 3.1.0 already installed in $("$PY" -c 'import sys; print(sys.prefix)')"
  exit 0
fi

T0=$(date +%s)
NPVER=$("$PY" -c 'import numpy; print(numpy.__version__)')
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELDIR="$CACHE/wheels/$PYTAG-numpy$NPVER"
PIP=("$PY" -m pip --disable-pip-version-check)

build_wheel() {  # $1: scratch directory
  local work="$1" src="$1/pyradiomics-3.1.0"
  # Build tools kept out of the active environment: setuptools >= 70.1 ships bdist_wheel; versioneer
  # is only needed for pip's metadata step of the downloads (the build uses the sdist's own copy).
  "${PIP[@]}" install -q --target "$work/tools" "setuptools>=70.1,<81" "wheel>=0.43"
  export PYTHONPATH="$work/tools${PYTHONPATH:+:$PYTHONPATH}"
  # Both archives located by name in pip's index and checked against the pins by our own sha256
  # (tools/fetch_sdist.py); 3.0.1 only for the two missing headers.
  "$PY" "$HERE/fetch_sdist.py" pyradiomics pyradiomics-3.1.0.tar.gz "$SHA_310" "$work/dl" >/dev/null
  "$PY" "$HERE/fetch_sdist.py" pyradiomics pyradiomics-3.0.1.tar.gz "$SHA_301" "$work/dl" >/dev/null
  tar -xzf "$work/dl/pyradiomics-3.1.0.tar.gz" -C "$work"
  tar -xzf "$work/dl/pyradiomics-3.0.1.tar.gz" -C "$work" \
    pyradiomics-3.0.1/radiomics/src/cmatrices.h pyradiomics-3.0.1/radiomics/src/cshape.h
  cp "$work"/pyradiomics-3.0.1/radiomics/src/{cmatrices.h,cshape.h} "$src/radiomics/src/"
  # Patches, each checked, so a changed archive fails loudly instead of building something else.
  sed -i 's/^version = "3.0.1a1"$/version = "3.1.0"/' "$src/pyproject.toml"
  grep -q '^version = "3.1.0"$' "$src/pyproject.toml"
  sed -i 's/return numpy\.float(0\.0)/return 0.0/' "$src/radiomics/firstorder.py"
  if grep -q 'numpy\.float(' "$src/radiomics/firstorder.py"; then return 1; fi
  # distutils is deprecated (gone in Python 3.12): take the include dir from sysconfig.
  sed -i 's/^from distutils import sysconfig$/import sysconfig/; s/sysconfig\.get_python_inc()/sysconfig.get_paths()["include"]/' \
    "$src/setup.py"
  grep -q 'sysconfig.get_paths()\["include"\]' "$src/setup.py"
  # Compile against the NumPy of the active environment (no build isolation).
  PYTHONPATH="$src:$PYTHONPATH" "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$work/whl" "$src"
  mkdir -p "$WHEELDIR"
  cp "$work"/whl/pyradiomics-3.1.0-*.whl "$WHEELDIR/"
}

if ! ls "$WHEELDIR"/pyradiomics-3.1.0-*.whl >/dev/null 2>&1; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  echo "building pyradiomics 3.1.0 from the PyPI sdists ..."
  if ! (build_wheel "$WORK") >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    echo "pyradiomics build failed" >&2
    exit 1
  fi
fi

"${PIP[@]}" install -q "${DEPS[@]}"
"${PIP[@]}" install -q --no-deps --force-reinstall "$WHEELDIR"/pyradiomics-3.1.0-*.whl
check || { echo "pyradiomics installed but does not import" >&2; exit 1; }
echo "pyradiomics 3.1.0 installed in $(( $(date +%s) - T0 )) s (wheel cache: $WHEELDIR)"
