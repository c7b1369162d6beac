#!/usr/bin/env bash
# `make bench`: install wrk if needed, then measure raw ONNX Runtime, the service and the naive
# server in one run (bench/bench.py). BENCH_QUICK=1 for a ~2-minute development run; see the
# docstring of bench/bench.py for the other BENCH_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing Debian's wrk (HTTP load generator)" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        echo "bench: wrk is missing: run 'apt-get install wrk' as root" >&2
        exit 1
    fi
fi

export BENCH_COMMAND="${BENCH_COMMAND:-make bench${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}}"
.venv/bin/python -m bench.bench "$@"
.venv/bin/python -m bench.operations
