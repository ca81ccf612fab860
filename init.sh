#!/bin/sh
# Set up Deep Feature Flow in the active Python: install the project (editable) with its
# dependencies, then build the C++/CUDA operators. Idempotent: run it again after pulling.
# A failed or absent operator build only warns: everything falls back to pure PyTorch.
set -e
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python

echo "== installing the project and its dependencies into $($PY -c 'import sys; print(sys.prefix)')"
$PY -m pip install --quiet --disable-pip-version-check -e ".[test,build,deploy]"

mkdir -p output model data/cache

echo "== building the compiled operators (operator_cxx/)"
if ! $PY -m dff.ops.build; then
    echo "WARNING: the operator build failed; the pure-PyTorch operators will be used (slower)." >&2
fi
$PY -c "import dff.ops as o; print('operators:', 'compiled' if o.compiled_available() else 'pure PyTorch fallback')" || true
echo "== done"
