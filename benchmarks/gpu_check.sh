#!/usr/bin/env bash
# One GPU check that fits a short window (about 8 minutes on one H100/H200):
#   1. prerequisites, in seconds: `make setup` done, the data there, torch sees CUDA;
#   2. the suite's GPU rows (benchmarks/suite.py --env gpu --device cuda), about a minute;
#   3. the whole main job, `kedro run --env gpu` (conf/gpu: about 6 minutes), in a copy of the
#      project under the output folder, stopped when the window would be exceeded;
#   4. the main job's wall time per pipeline, read back from that run's MLflow store.
# Everything goes to one folder: $OUT if set, else tmp/gpu_check/<date>.
#
#   benchmarks/gpu_check.sh             # on the GPU machine, after `make setup`
#   benchmarks/gpu_check.sh --dry-run   # the same logic on the CPU with conf/quick sizes
#
# Environment: OUT (output folder), GPU_CHECK_BUDGET_S (the whole window, default 470),
# VENV (the virtual environment, default .venv).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
KEDRO="$VENV/bin/kedro"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"  # 8 minutes, less the machine's start and the copy back
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
START=$(date +%s)
OUT="${OUT:-$ROOT/tmp/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
export KEDRO_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 MPLBACKEND=Agg NO_COLOR=1 COLUMNS=200
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

say() { echo "[gpu_check $(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }
fail() { say "FAILED: $*"; exit 1; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

if ((DRY_RUN)); then  # no window to fit in: generous limits (a shared CPU may be slow)
  ENV=quick DEVICE=cpu SUITE_FLAGS=(--quick --env quick --threads 1) SUITE_S=900
  BUDGET_S="${GPU_CHECK_BUDGET_S:-2400}"
  say "dry run: conf/quick on the CPU (the logic, not the figures)"
else
  ENV=gpu DEVICE=cuda SUITE_FLAGS=(--env gpu) SUITE_S=120
fi
READ_BACK_S=60

# ---------------------------------------------------------------- 1. prerequisites (seconds)
[[ -x "$PY" && -x "$KEDRO" ]] || fail "no $VENV: run \`make setup\` first"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
  t10k-labels-idx1-ubyte.gz; do
  [[ -s "$ROOT/data/01_raw/fashion-mnist/$f" ]] ||
    fail "data/01_raw/fashion-mnist/$f missing: run \`make setup\` (or \`make data\`) first"
done
[[ -d "$ROOT/conf/$ENV" ]] || fail "conf/$ENV missing"
"$PY" - "$DEVICE" >>"$LOG" 2>&1 <<'EOF' || fail "torch does not see a CUDA GPU (see $LOG)"
import sys
import torch
import spire_pipeline  # noqa: F401  (the project is installed)
print("torch", torch.__version__, "cuda", torch.version.cuda)
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("torch.cuda.is_available() is False")
    print("GPU:", torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory >> 30, "GiB")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
git -C "$ROOT" rev-parse HEAD >"$OUT/commit.txt" 2>/dev/null
say "prerequisites met (env $ENV, device $DEVICE); output in $OUT"

# ---------------------------------------------------------------- 2. the suite's GPU rows
SUITE_ROWS=machine,training,adaptation,sampling,federation
if ! timeout "$SUITE_S" "$PY" "$ROOT/benchmarks/suite.py" "${SUITE_FLAGS[@]}" --device "$DEVICE" \
  --only "$SUITE_ROWS" --out "$OUT/benchmarks_$ENV.csv" >"$OUT/suite.log" 2>&1; then
  say "suite rows failed or timed out (see $OUT/suite.log); going on with the main job"
else
  say "suite rows written to $OUT/benchmarks_$ENV.csv"
fi

# ---------------------------------------------------------------- 3. the main job
PROJECT="$OUT/project"
mkdir -p "$PROJECT/src" "$PROJECT/tmp"
cp "$ROOT/pyproject.toml" "$PROJECT/"
cp -r "$ROOT/conf" "$PROJECT/conf"
find "$PROJECT/conf/local" -mindepth 1 ! -name .gitkeep -delete 2>/dev/null
for d in "$ROOT"/data/*/; do mkdir -p "$PROJECT/data/$(basename "$d")"; done
ln -sfn "$ROOT/data/01_raw/fashion-mnist" "$PROJECT/data/01_raw/fashion-mnist"
RUN_S=$(($(left) - READ_BACK_S - 15))
((RUN_S > 60)) || fail "no time left for the main job"
say "kedro run --env $ENV (at most $RUN_S s)"
(cd "$PROJECT" && FLWR_HOME="$PROJECT/tmp/flwr" RAY_TMPDIR="$PROJECT/tmp/ray" \
  timeout --signal=INT --kill-after=10 "$RUN_S" "$KEDRO" run --env "$ENV") \
  >"$OUT/kedro_run.log" 2>&1
RC=$?
case $RC in
  0) say "main job finished" ;;
  124 | 130) say "main job stopped after $RUN_S s (window exhausted; checkpoints kept)" ;;
  *) say "main job failed with exit code $RC (tail of $OUT/kedro_run.log):"
     tail -20 "$OUT/kedro_run.log" | tee -a "$LOG" ;;
esac

# ---------------------------------------------------------------- 4. its time per pipeline
timeout "$READ_BACK_S" "$PY" "$ROOT/benchmarks/suite.py" --env "$ENV" --only main_job \
  --mlflow-uri "sqlite:///$PROJECT/mlflow.db" --out "$OUT/main_job_$ENV.csv" \
  >>"$OUT/suite.log" 2>&1 || say "could not read the main job's timing back"
grep -h "Wall time per pipeline" "$OUT/kedro_run.log" | tail -1 | tee -a "$LOG"
say "done in $(($(date +%s) - START)) s; results in $OUT"
exit $RC
