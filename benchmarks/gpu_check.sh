#!/bin/sh
# Every GPU check in one command (see benchmarks/gpu_check.py): gpu tests, throughput, dry run -> one JSON report.
#   sh benchmarks/gpu_check.sh [OUT.json] [--quick]
cd "$(dirname "$0")/.." || exit 1
exec python benchmarks/gpu_check.py --out "${1:-gpu_check.json}" ${2:+"$2"}
