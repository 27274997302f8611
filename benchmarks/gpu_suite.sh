#!/usr/bin/env bash
# The GPU suite in one command, on a bare GPU machine with torch, triton and nvcc (no network), in under 10 minutes:
# builds ackd_fast._C with CUDA for the GPU present, runs the tests marked `cuda`, measures the device's ceilings,
# runs every benchmark, and writes the JSON, the logs and summary.md (benchmarks/README.md explains it).
#
#   benchmarks/gpu_suite.sh [OUT_DIR]            # OUT_DIR: default $OUT, else benchmarks/results/<date>-<gpu>
#   benchmarks/gpu_suite.sh --dry-run [OUT_DIR]  # no GPU needed (CI): every phase's CPU-checkable part
#
# The dry run checks the build command (pip resolves it, setup.py runs with FORCE_CUDA), collects the cuda tests,
# measures the ceilings at tiny sizes on the CPU, runs every benchmark at its smoke size and writes summary.md.
# Environment: PYTHON (default .venv/bin/python when present, else python3), ACKD_SUITE_BUDGET_S (570),
# MAX_JOBS (build jobs; default the core count), ACKD_GIT_COMMIT (the commit to report where the copy has no .git).
set -uo pipefail

DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
out_arg=${1:+$(realpath -m "$1")} # before the cd: relative to where the suite was started
cd "$(dirname "$0")/.."
if [[ -n ${PYTHON:-} ]]; then
  PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
BUDGET_S=${ACKD_SUITE_BUDGET_S:-570}
if ((DRY_RUN)); then
  OUT_DIR=${out_arg:-$(mktemp -d -t gpu-suite-dry-run.XXXXXX)}
  ARCH=9.0 # what the build would target on an H100
  export ACKD_BENCH_SMOKE=1
else
  # the compute capability of the GPU present, e.g. 9.0: the build compiles for it alone
  if ! ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null); then
    echo "no CUDA device visible to $PY (use --dry-run to check the suite without one)" >&2
    exit 2
  fi
  gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name())" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
  OUT_DIR=${out_arg:-${OUT:-benchmarks/results/$(date +%Y-%m-%d)-$gpu}}
fi
source benchmarks/suite_lib.sh
suite_init

# --- build: ackd_fast._C with its CUDA kernels (FORCE_CUDA: fail rather than build without them)
build_env=(env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}")
if ((DRY_RUN)); then
  # pip resolves the command and runs setup.py's metadata step (which settles CUDA_HOME and FORCE_CUDA) without
  # compiling anything
  phase build 120 "${build_env[@]}" "$PY" -m pip install --dry-run --no-build-isolation --no-deps -e .
elif "$PY" -m pip --version > /dev/null 2>&1; then
  phase build 360 "${build_env[@]}" "$PY" -m pip install -v --no-build-isolation --no-deps -e .
else
  # a Python without pip: build in place; the Triton kernels (kernels/, installed as ackd_fast.kernels) are then
  # reached through a link that .gitignore keeps out of commits
  ln -sfn ../kernels ackd_fast/kernels
  phase build 360 "${build_env[@]}" "$PY" setup.py build_ext --inplace
fi
# what the build gave and what backend="auto" runs; fails unless the extension loads with its CUDA kernels
phase backends 60 "$PY" -c "
import json, sys, ackd_fast
b = ackd_fast.backends()
print(json.dumps(b, indent=1))
print('auto runs:', b['ops'])
sys.exit(0 if b['extension']['loaded'] and (b['extension']['cuda_compiled'] or $DRY_RUN) else 1)"

# --- tests
if ((DRY_RUN)); then
  phase tests 60 "$PY" -m pytest -m cuda tests -q -p no:cacheprovider --collect-only
else
  phase tests 150 "$PY" -m pytest -m cuda tests -q -p no:cacheprovider
fi

# --- ceilings, then the benchmarks: few rounds (a GPU step takes milliseconds; the ratios need no more)
if ((DRY_RUN)); then
  phase ceilings 60 "$PY" benchmarks/ceilings.py "$OUT_DIR/ceilings.json" --device cpu --tiny
  rounds=(--benchmark-min-rounds=1 --benchmark-max-time=0 --benchmark-warmup=off)
else
  phase ceilings 60 "$PY" benchmarks/ceilings.py "$OUT_DIR/ceilings.json"
  rounds=(--benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-warmup=off)
fi
bench_phase bench_train_step 180 "${rounds[@]}"
bench_phase bench_ack_attention 120 "${rounds[@]}"
bench_phase bench_ack_fusion 150 "${rounds[@]}"
bench_phase bench_deploy 240 "${rounds[@]}"

if ((DRY_RUN)); then
  finish "GPU suite dry run (no GPU: smoke sizes, tiny ceilings; no figure here is a measurement)"
else
  finish "GPU suite: $("$PY" -c "import torch; print(torch.cuda.get_device_name())")"
fi
