#!/usr/bin/env bash
# The GPU benchmark suite in one command: times every ACK-A path at the paper's shapes and writes the JSON
# to benchmarks/results/<date>-<gpu>.json (commit it). Needs a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu=$(.venv/bin/python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
out="benchmarks/results/$(date +%Y%m%d)-${gpu}.json"
.venv/bin/python -m pytest benchmarks/bench_ack_attention.py -q --benchmark-json="$out" \
  --benchmark-columns=mean,stddev,rounds --benchmark-sort=name "$@"
echo "wrote $out"
