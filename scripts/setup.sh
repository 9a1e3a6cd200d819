#!/usr/bin/env bash
# Create/update the virtual environment and fetch the data/model assets.
#   TORCH_SPEC  torch requirement installed first (default torch==2.13.0, the CPU build;
#               e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." for a CUDA build)
#   VENV        virtual environment folder (default .venv)
#   FEDPRIV_CACHE  where datasets and the MiniLM model are cached (default ~/.cache/fedpriv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
# shellcheck disable=SC2086
python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
python -m pip install --quiet -e ".[dev]"
python -m common.data.assets
