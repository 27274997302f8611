#!/usr/bin/env bash
# The CPU suite in one command, from a fresh clone: sets up .venv (`make install-cpu`: the CPU kernels, or the full
# build when there is one), measures the CPU's ceilings, times the ACK-F ops and module, one distillation step at
# the small CPU setting and the deployed generators (bench_deploy), each against its PyTorch paths in the same run,
# and writes the JSON, the logs and summary.md (benchmarks/README.md explains it). About 15 minutes on 2 cores, most
# of it the set-up and inductor.
#
#   benchmarks/cpu_suite.sh [OUT_DIR]       # default benchmarks/results/<date>-cpu-<cores>core-<cpu>
#
# Environment: PYTHON (an environment that already has torch and the built extension; skips the set-up),
# ACKD_SUITE_BUDGET_S (1200).
set -uo pipefail
out_arg=${1:+$(realpath -m "$1")} # before the cd: relative to where the suite was started
cd "$(dirname "$0")/.."

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2> /dev/null | head -n 1)
cpu=$(echo "${cpu:-$(uname -m)}" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-' | cut -c 1-24)
OUT_DIR=${out_arg:-benchmarks/results/$(date +%Y-%m-%d)-cpu-$(nproc)core-$cpu}
BUDGET_S=${ACKD_SUITE_BUDGET_S:-1200}
PY=${PYTHON:-.venv/bin/python}
source benchmarks/suite_lib.sh
suite_init

if [[ -z ${PYTHON:-} ]]; then
  phase setup 600 make install-cpu
fi
phase ceilings 120 "$PY" benchmarks/ceilings.py "$OUT_DIR/ceilings.json" --device cpu
# pytest-benchmark's defaults (at least 5 rounds, about 1 s per path); bench_ack_fusion times 10 rounds
bench_phase bench_ack_fusion 600
bench_phase bench_train_step 600
bench_phase bench_kd_step 900
# the student and the teacher at 256x256: four compiles of the student, one of the teacher (several minutes)
bench_phase bench_deploy 600

finish "CPU suite: $(nproc) cores, $cpu"
