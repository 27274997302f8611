# Sourced by cpu_suite.sh and gpu_suite.sh: a suite is a list of phases, each run with a time cap, its output in
# $OUT_DIR/<phase>.log and its exit code and seconds in $OUT_DIR/phases.tsv (summary.md shows them). A phase that
# fails does not stop the ones after it; `finish` writes summary.md and exits non-zero if any phase failed.
#
# The caller sets OUT_DIR, PY (the Python to run), BUDGET_S (the whole suite's wall-clock budget).

SUITE_START=$(date +%s)
REPORT_RESERVE_S=30 # kept back from the budget for the report
SUITE_FAILED=0

suite_init() {
  mkdir -p "$OUT_DIR"
  : > "$OUT_DIR/phases.tsv"
  # The checkout's ackd_fast first, whichever Python runs it (a venv with an editable install, or a bare one).
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "output: $OUT_DIR (budget ${BUDGET_S}s)"
}

# phase NAME CAP_S COMMAND...: runs COMMAND with at most CAP_S seconds, fewer when the budget is running out.
# Exit code 124: the cap was hit. The cap sends SIGINT first: pytest then still writes the results it has. With
# PARTIAL_OK=1 (the benchmarks) a phase cut at its cap is "partial": its results so far are kept and the suite does
# not fail for it.
phase() {
  local name=$1 cap=$2 code
  shift 2
  local left=$((SUITE_START + BUDGET_S - REPORT_RESERVE_S - $(date +%s)))
  ((cap > left)) && cap=$left
  local t0
  t0=$(date +%s)
  if ((cap < 5)); then
    code=skipped
    echo "no time left in the budget" > "$OUT_DIR/$name.log"
  else
    echo "== $name (at most ${cap}s): $*"
    timeout -s INT -k 30 "$cap" "$@" > "$OUT_DIR/$name.log" 2>&1
    code=$?
  fi
  [[ $code == 124 && ${PARTIAL_OK:-0} == 1 ]] && code=partial
  local seconds=$(($(date +%s) - t0)) last
  last=$(grep -v '^[[:space:]]*$' "$OUT_DIR/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c 1-160)
  printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$seconds" "$last" >> "$OUT_DIR/phases.tsv"
  echo "   exit $code after ${seconds}s: $last"
  [[ $code == 0 || $code == partial ]] || SUITE_FAILED=1
}

# bench_phase FILE [pytest options...]: one benchmark file, its results in $OUT_DIR/FILE.json
bench_phase() {
  local file=$1 cap=$2
  shift 2
  PARTIAL_OK=1 phase "$file" "$cap" "$PY" -m pytest "benchmarks/$file.py" -q -p no:cacheprovider \
    --benchmark-json="$OUT_DIR/$file.json" --benchmark-sort=name --benchmark-columns=median,iqr,rounds "$@"
}

finish() {
  local title=$1
  echo "== report"
  "$PY" benchmarks/report.py "$OUT_DIR" --title "$title" > "$OUT_DIR/report.log" 2>&1 || {
    cat "$OUT_DIR/report.log"
    SUITE_FAILED=1
  }
  echo "wrote $OUT_DIR/summary.md in $(($(date +%s) - SUITE_START))s"
  if ((SUITE_FAILED)); then
    echo "some phases failed: see $OUT_DIR/phases.tsv and their logs" >&2
    exit 1
  fi
}
