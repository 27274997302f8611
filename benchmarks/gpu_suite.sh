#!/usr/bin/env bash
# The GPU suite in one command, on a bare GPU machine with torch, triton and nvcc (no network), within its budget on a
# cold machine: builds ackd_fast._C with CUDA for the GPU present, checks every Triton tile numerically, runs the
# other tests marked `cuda`, measures the device's ceilings, then the benchmarks in order of value (ACK-A at the
# paper's shape, the training step, ACK-F, deploy), and writes the JSON, the logs and summary.md
# (benchmarks/README.md explains it). summary.md gives each group's ratio twice: synced per call (every call ends
# in a synchronize, what an eager user pays, Python included) and kernel-only (extra_info kernel_ms: CUDA events over
# back-to-back calls, where the ACK-A and ACK-F benchmarks record it). Tuning comes first, in its own command:
# benchmarks/gpu_tune.py.
#
#   benchmarks/gpu_suite.sh [OUT_DIR]            # OUT_DIR: default $OUT, else benchmarks/results/<date>-<gpu>
#   benchmarks/gpu_suite.sh --quick [OUT_DIR]    # 4 minutes: build, per-tile correctness, the headline ACK-A and step
#   benchmarks/gpu_suite.sh --dry-run [OUT_DIR]  # no GPU needed (CI): every phase's CPU-checkable part
#   benchmarks/gpu_suite.sh --plan [--quick]     # print the phases and their caps, run nothing
#
# The phases' caps sum to at most the budget less the report's reserve, so a cold machine runs every phase; a
# benchmark phase cut at its cap keeps the results it has (pytest writes them on SIGINT) and counts as partial, not
# failed. Triton's and inductor's caches live in .cache/ in the checkout (ignored), so a second call on the same
# machine is warm. The dry run checks the build command (pip resolves it, setup.py runs with FORCE_CUDA), collects
# the cuda tests, measures the ceilings at tiny sizes on the CPU, runs every benchmark at its smoke size and writes
# summary.md. Environment: PYTHON (default .venv/bin/python when present, else python3), ACKD_SUITE_BUDGET_S (570;
# 240 with --quick), MAX_JOBS (build jobs; default the core count), ACKD_GIT_COMMIT (the commit to report where the
# copy has no .git).
set -uo pipefail

DRY_RUN=0 QUICK=0 PLAN=0
while [[ ${1:-} == --* ]]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --quick) QUICK=1 ;;
    --plan) PLAN=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
out_arg=${1:+$(realpath -m "$1")} # before the cd: relative to where the suite was started
cd "$(dirname "$0")/.."

# The phases in order of value: name and cap in seconds (the caps sum to at most BUDGET_S - 30).
if ((QUICK)); then
  BUDGET_S=${ACKD_SUITE_BUDGET_S:-240}
  PLAN_PHASES=(build:75 backends:15 tile_tests:60 bench_ack_attention:30 bench_train_step:30)
else
  BUDGET_S=${ACKD_SUITE_BUDGET_S:-570}
  PLAN_PHASES=(build:75 backends:15 tile_tests:60 tests:110 ceilings:15 bench_ack_attention:75 bench_train_step:90
    bench_ack_fusion:50 bench_deploy:50)
fi
# A smaller ACKD_SUITE_BUDGET_S scales every cap down alike (the report keeps 30 s: suite_lib.sh's REPORT_RESERVE_S).
declare -A CAP
total=0
for entry in "${PLAN_PHASES[@]}"; do total=$((total + ${entry##*:})); done
usable=$((BUDGET_S - 30))
for entry in "${PLAN_PHASES[@]}"; do
  cap=${entry##*:}
  ((total > usable)) && cap=$((cap * usable / total))
  CAP[${entry%%:*}]=$cap
done
capped=0
for name in "${!CAP[@]}"; do capped=$((capped + CAP[$name])); done
if ((capped > usable)); then # cannot happen after the scaling above; the dry run in CI checks it stays so
  echo "the phases' caps sum to ${capped}s, over the budget of ${BUDGET_S}s less 30s for the report" >&2
  exit 2
fi
if ((PLAN)); then
  echo "budget $BUDGET_S"
  for entry in "${PLAN_PHASES[@]}"; do echo "phase ${entry%%:*} ${CAP[${entry%%:*}]}"; done
  exit 0
fi
# warm compiles on a second call on the same machine
export TRITON_CACHE_DIR=$PWD/.cache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor
if [[ -n ${PYTHON:-} ]]; then
  PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
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
  phase build "${CAP[build]}" "${build_env[@]}" "$PY" -m pip install --dry-run --no-build-isolation --no-deps -e .
elif "$PY" -m pip --version > /dev/null 2>&1; then
  phase build "${CAP[build]}" "${build_env[@]}" "$PY" -m pip install -v --no-build-isolation --no-deps -e .
else
  # a Python without pip: build in place; the Triton kernels (kernels/, installed as ackd_fast.kernels) are then
  # reached through a link that .gitignore keeps out of commits
  ln -sfn ../kernels ackd_fast/kernels
  phase build "${CAP[build]}" "${build_env[@]}" "$PY" setup.py build_ext --inplace
fi
# what the build gave and what backend="auto" runs; fails unless the extension loads with its CUDA kernels
phase backends "${CAP[backends]}" "$PY" -c "
import json, sys, ackd_fast
b = ackd_fast.backends()
print(json.dumps(b, indent=1))
print('auto runs:', b['ops'])
sys.exit(0 if b['extension']['loaded'] and (b['extension']['cuda_compiled'] or $DRY_RUN) else 1)"

# --- tests: every Triton tile first (the kernels' correctness), then the other cuda tests
TILE_TESTS=tests/test_gpu_tiles.py
if ((DRY_RUN)); then
  phase tile_tests "${CAP[tile_tests]}" "$PY" -m pytest -m cuda "$TILE_TESTS" -q -p no:cacheprovider --collect-only
  phase tests "${CAP[tests]}" "$PY" -m pytest -m cuda tests -q -p no:cacheprovider --collect-only \
    --ignore="$TILE_TESTS"
else
  phase tile_tests "${CAP[tile_tests]}" "$PY" -m pytest -m cuda "$TILE_TESTS" -q -p no:cacheprovider
  [[ -n ${CAP[tests]:-} ]] && phase tests "${CAP[tests]}" "$PY" -m pytest -m cuda tests -q -p no:cacheprovider \
    --ignore="$TILE_TESTS"
fi

# --- ceilings, then the benchmarks: few rounds (a GPU step takes milliseconds; the ratios need no more)
if ((DRY_RUN)); then
  phase ceilings "${CAP[ceilings]:-15}" "$PY" benchmarks/ceilings.py "$OUT_DIR/ceilings.json" --device cpu --tiny
  rounds=(--benchmark-min-rounds=1 --benchmark-max-time=0 --benchmark-warmup=off)
else
  [[ -n ${CAP[ceilings]:-} ]] && phase ceilings "${CAP[ceilings]}" "$PY" benchmarks/ceilings.py "$OUT_DIR/ceilings.json"
  rounds=(--benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-warmup=off)
fi
if ((QUICK)); then  # the headline ratios: ACK-A at the paper's shape, the bf16 training step
  bench_phase bench_ack_attention "${CAP[bench_ack_attention]}" "${rounds[@]}" -k "paper and (ackd_triton or cudnn)"
  bench_phase bench_train_step "${CAP[bench_train_step]}" "${rounds[@]}" -k "bf16 and eager"
else
  for name in bench_ack_attention bench_train_step bench_ack_fusion bench_deploy; do
    bench_phase "$name" "${CAP[$name]}" "${rounds[@]}"
  done
fi

if ((DRY_RUN)); then
  finish "GPU suite dry run (no GPU: smoke sizes, tiny ceilings; no figure here is a measurement)"
else
  finish "GPU suite: $("$PY" -c "import torch; print(torch.cuda.get_device_name())")"
fi
