#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (H100/H200): GPU info, the CUDA tests,
# `streamsr bench` with the paper model at 480x270 in bf16 (CUDA graphs on, the default), the
# same without CUDA graphs (model + pipeline only), TensorRT against the torch pipeline (when
# tensorrt is installed there), a torch.profiler profile of the paper model,
# the pipeline with NVDEC + NVENC, then, time allowing, a short sweep.
#
# Everything is teed to $OUT/gpu_check.log and the JSON results land in $OUT. Each step has its
# own timeout, cut to the time left in the whole budget (GPU_CHECK_BUDGET seconds, default 540),
# and a failing step never stops the next one. Run from anywhere; it works in the project root.
#
# On the device (no network there: wheels it lacks, e.g. PyAV's, travel in the git-ignored .whl/):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; bash scripts/gpu_check.sh
# Rehearsal on a CPU machine (same steps, cpu + tiny model + tiny sizes):
#   GPU_CHECK_DRY=1 OUT=/tmp/gpu_check bash scripts/gpu_check.sh
# Overrides: PYTHON, BENCH_FRAMES, SWEEP_FRAMES, SWEEP_SIZES, SWEEP_BATCHES, PROFILE_BATCH,
# GPU_CHECK_BUDGET;
# GPU_CHECK_COMPILE=1 adds a torch.compile bench at the end (if time is left).

set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

PY=${PYTHON:-python3}
START=$SECONDS
RESERVE=10  # seconds kept for the summary at the end
export PYTHONUNBUFFERED=1  # a step killed by its timeout still leaves its output in the log
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"

if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
  echo "GPU_CHECK_DRY=1: rehearsal on the CPU with the tiny model and tiny sizes"
  DEVICE=cpu MODEL=tiny RES=64x48 PRECISION=fp32
  BENCH_FRAMES=${BENCH_FRAMES:-4} SWEEP_FRAMES=${SWEEP_FRAMES:-2} PROFILE_BATCH=${PROFILE_BATCH:-1}
  HW_CODEC=libx264 HW_PRESET=ultrafast  # no NVENC here: the step rehearses its plumbing
  SWEEP_SIZES=${SWEEP_SIZES:-32x16,64x48} SWEEP_BATCHES=${SWEEP_BATCHES:-1,2}
  BUDGET=${GPU_CHECK_BUDGET:-300}
else
  DEVICE=cuda MODEL=paper RES=480x270 PRECISION=bf16
  BENCH_FRAMES=${BENCH_FRAMES:-128} SWEEP_FRAMES=${SWEEP_FRAMES:-32} PROFILE_BATCH=${PROFILE_BATCH:-8}
  HW_CODEC=h264_nvenc HW_PRESET=p4
  SWEEP_SIZES=${SWEEP_SIZES:-320x180,480x270,960x540} SWEEP_BATCHES=${SWEEP_BATCHES:-1,2,4,8}
  BUDGET=${GPU_CHECK_BUDGET:-540}
fi
SUMMARY=()

# step NAME MAX_SECONDS COMMAND...: run with a timeout (MAX or the budget left), log rc and time.
step() {
  local name=$1 max=$2
  shift 2
  local left=$(( BUDGET - (SECONDS - START) - RESERVE ))
  if (( left < 20 )); then
    echo "== $name: skipped, only ${left}s of the budget left"
    SUMMARY+=("$name: skipped (no time left)")
    return 0
  fi
  local limit=$(( max < left ? max : left ))
  echo
  echo "== $name (timeout ${limit}s, $(date -u +%H:%M:%S) UTC)"
  echo "\$ $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  local note=""
  if (( rc == 124 || rc == 137 )); then note=" (timed out)"; fi
  echo "== $name: exit $rc$note after $(( SECONDS - t0 ))s"
  SUMMARY+=("$name: exit $rc$note, $(( SECONDS - t0 ))s")
}

echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s, device $DEVICE, out $OUT"

step "nvidia-smi" 20 nvidia-smi
step "gpu query" 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
  --format=csv

# PyAV: the lead installs the carried wheel first; install it here if that was skipped.
if ! "$PY" -c "import av" 2>/dev/null && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  step "install PyAV wheel" 60 "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

step "versions" 60 "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "| bf16", torch.cuda.is_bf16_supported(),
          "| cudnn", torch.backends.cudnn.version())
try:
    import av
    print("PyAV", av.__version__, "| FFmpeg", getattr(av, "ffmpeg_version_info", "?"),
          "| h264_nvenc", "h264_nvenc" in av.codecs_available, "| h264_cuvid", "h264_cuvid" in av.codecs_available)
except ImportError as exc:
    print("PyAV missing:", exc)
EOF

# -m cuda overrides the project's default "-m 'not slow'"; modules that need packages the GPU
# image lacks fail to collect and are reported, the others still run.
step "pytest engine (cuda)" 150 "$PY" -m pytest tests/test_engine.py -m cuda -q -p no:cacheprovider -rs
step "pytest other cuda tests" 120 "$PY" -m pytest tests -m cuda -q -p no:cacheprovider -rs \
  --ignore=tests/test_engine.py --continue-on-collection-errors

BENCH_JSON="$OUT/bench_${MODEL}_${RES}.json"
step "bench $MODEL $RES $PRECISION" 240 "$PY" -m streamsr bench --device "$DEVICE" --model "$MODEL" \
  --resolution "$RES" --precision "$PRECISION" --frames "$BENCH_FRAMES" --json "$BENCH_JSON"
[ -s "$BENCH_JSON" ] && cat "$BENCH_JSON"

# TensorRT against the torch pipeline, side by side (issue 17's bar: >= 1.5x end to end). The
# device has no network: tensorrt must already be importable there (its wheels are too big to
# carry); otherwise the step says so and is skipped. The first run builds the engine (minutes
# for paper) into $STREAMSR_CACHE_DIR, so it is timed after a build step of its own.
if [ "$DEVICE" = cuda ]; then
  TRT_BACKENDS=torch,tensorrt
else  # rehearsal: the same side-by-side plumbing with the CPU runtimes
  TRT_BACKENDS=torch,openvino
fi
export STREAMSR_CACHE_DIR=${STREAMSR_CACHE_DIR:-$OUT/model_cache}
if "$PY" -c "import ${TRT_BACKENDS#torch,}, onnx" 2>/dev/null; then
  step "build ${TRT_BACKENDS#torch,} engines" 300 "$PY" -m streamsr bench --device "$DEVICE" \
    --model "$MODEL" --resolution "$RES" --precision "$PRECISION" --frames 2 --skip pipeline \
    --backend "$TRT_BACKENDS"
  step "bench $MODEL $RES $PRECISION --backend $TRT_BACKENDS" 240 "$PY" -m streamsr bench \
    --device "$DEVICE" --model "$MODEL" --resolution "$RES" --precision "$PRECISION" \
    --frames "$BENCH_FRAMES" --backend "$TRT_BACKENDS" --json "$OUT/bench_${MODEL}_${RES}_backends.json"
  step "pytest backends (cuda)" 120 "$PY" -m pytest tests/test_backends.py -m cuda -q \
    -p no:cacheprovider -rs
else
  echo "== ${TRT_BACKENDS#torch,} backend: skipped (python cannot import ${TRT_BACKENDS#torch,} and onnx here)"
  SUMMARY+=("${TRT_BACKENDS#torch,} backend: skipped (not installed)")
fi

# CUDA graphs off, same settings: the difference to the bench above is what the graphs buy.
step "bench $MODEL $RES $PRECISION --cuda-graphs off" 150 "$PY" -m streamsr bench --device "$DEVICE" \
  --model "$MODEL" --resolution "$RES" --precision "$PRECISION" --frames "$BENCH_FRAMES" \
  --cuda-graphs off --skip naive --skip io --json "$OUT/bench_${MODEL}_${RES}_graphs_off.json"

# Where the model spends its time on the GPU (eager, kernel times): tables in the log, JSON and a
# Chrome trace in $OUT/profile.
step "profile $MODEL $RES $PRECISION" 120 "$PY" scripts/profile_model.py --device "$DEVICE" \
  --model "$MODEL" --size "$RES" --precision "$PRECISION" --batch "$PROFILE_BATCH" --iterations 5 \
  --warmup 2 --top 25 --out "$OUT/profile"

# NVDEC + NVENC in the pipeline (falls back to software decoding with a warning if NVDEC fails).
step "bench $MODEL $RES NVDEC+$HW_CODEC" 120 "$PY" -m streamsr bench --device "$DEVICE" \
  --model "$MODEL" --resolution "$RES" --precision "$PRECISION" --frames "$BENCH_FRAMES" \
  --decoder cuda --codec "$HW_CODEC" --encoder-preset "$HW_PRESET" --skip naive \
  --json "$OUT/bench_${MODEL}_${RES}_nvdec_${HW_CODEC}.json"

SWEEP_JSON="$OUT/sweep_${MODEL}.json"
step "sweep $MODEL" 240 "$PY" -m streamsr bench --sweep --device "$DEVICE" --model "$MODEL" \
  --precision "$PRECISION" --frames "$SWEEP_FRAMES" --sizes "$SWEEP_SIZES" --batches "$SWEEP_BATCHES" \
  --json "$SWEEP_JSON"

# Optional, off by default (compiling the paper model can take minutes): the same with torch.compile.
if [ "${GPU_CHECK_COMPILE:-0}" = 1 ]; then
  step "bench $MODEL $RES $PRECISION --compile" 240 "$PY" -m streamsr bench --device "$DEVICE" \
    --model "$MODEL" --resolution "$RES" --precision "$PRECISION" --frames "$BENCH_FRAMES" --compile \
    --skip naive --skip io --json "$OUT/bench_${MODEL}_${RES}_compile.json"
fi

echo
echo "== summary ($(( SECONDS - START ))s of ${BUDGET}s)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
ls -la "$OUT"
exit 0
