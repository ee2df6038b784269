#!/usr/bin/env bash
# The GPU acceptance run: one table (see benchmarks/acceptance.py). On a GPU machine with the working
# tree and the installed wheels:   bash benchmarks/gpu_acceptance.sh
# The same checks at tiny sizes on a CPU:   bash benchmarks/gpu_acceptance.sh --device cpu --small
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/acceptance.py "$@"
