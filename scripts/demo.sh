#!/usr/bin/env bash
# Set up (see setup.sh) and run the demo: 4 simulated sites train a DP-SGD head on the frozen,
# real all-MiniLM-L6-v2 on rotten-tomatoes (non-IID). Extra arguments go to simulations.run,
# e.g. --set num-server-rounds=5 or --config simulations/configs/heart-disease.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
python -m simulations.run --config simulations/configs/demo.toml "$@"
