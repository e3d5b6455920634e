#!/usr/bin/env bash
# Train the default model's recipe on a lent GPU machine (16 cores, one H100/H200, ~10 minutes)
# and bring back the weights, the learning curve and the bundled samples' margins over bicubic.
#
# Steps (each logged to $OUT/gpu_train.log):
#   1. photos: $PHOTOS if it holds PNGs (carry runs/photos), else train/export_photos.py
#      (needs scikit-image);
#   2. train: $RECIPE on the GPU, warm-started from $INIT (the committed default weights),
#      bf16 autocast, batch $BATCH, data workers on every core but two, $STEPS steps (the cosine
#      spans them); the run gets SIGINT after $TRAIN_BUDGET seconds, which checkpoints and stops
#      cleanly, so a slower machine still brings back its best weights;
#   3. curve: scripts/plot_curves.py -> $OUT/curve.csv (+ curve.png when matplotlib is there);
#   4. samples: samples/{handheld,dashcam}.mp4 through the real pipeline with the best weights,
#      scored by `streamsr eval-video` against the ground truth -> $OUT/<clip>.json;
#   5. $OUT/best.safetensors, model.safetensors, log.csv, recipe.toml.
#
# On the device (PyAV travels as a wheel, see the device notes in docs/training.md):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
#   bash scripts/gpu_train.sh          # carry: [".whl", "runs/photos"]
# Rehearsal on a CPU (tiny step budget, a few frames; tests/test_gpu_train.py runs it):
#   GPU_TRAIN_DRY=1 OUT=/tmp/gpu_train bash scripts/gpu_train.sh
# Overrides: PYTHON, PHOTOS, RECIPE, INIT, STEPS, BATCH, WORKERS, TRAIN_BUDGET, SETS (extra
# "--set k=v" words), FRAMES (sample frames scored; default all).

set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_train_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_train.log") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"
PY=${PYTHON:-python3}
PHOTOS=${PHOTOS:-$ROOT/runs/photos}
RECIPE=${RECIPE:-train/lite_long.toml}
INIT=${INIT:-streamsr/weights/lite.safetensors}
CORES=$(nproc)

if [ "${GPU_TRAIN_DRY:-0}" = 1 ]; then
  echo "GPU_TRAIN_DRY=1: rehearsal on the CPU with a tiny step budget"
  DEVICE=cpu STEPS=${STEPS:-2} BATCH=${BATCH:-2} WORKERS=${WORKERS:-0}
  TRAIN_BUDGET=${TRAIN_BUDGET:-240} FRAMES=${FRAMES:-3}
  EXTRA=(--set val_max=4 --set val_every=1 --set log_every=1 --set checkpoint_every=1
         --set samples_per_epoch=8)
else
  DEVICE=cuda STEPS=${STEPS:-4000} BATCH=${BATCH:-32}
  WORKERS=${WORKERS:-$(( CORES > 4 ? CORES - 2 : 1 ))}
  TRAIN_BUDGET=${TRAIN_BUDGET:-420} FRAMES=${FRAMES:-}
  EXTRA=(--set precision=bf16 --set deterministic=false --set val_every=250
         --set checkpoint_every=500 --set samples_per_epoch=$(( BATCH * 200 )))
fi
RUN=$OUT/run
START=$SECONDS
echo "== $(date -u +%FT%TZ) device=$DEVICE cores=$CORES recipe=$RECIPE init=$INIT steps=$STEPS batch=$BATCH workers=$WORKERS"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# 1. photos
if ! ls "$PHOTOS"/*.png >/dev/null 2>&1; then
  echo "== exporting the training photos to $PHOTOS"
  "$PY" train/export_photos.py "$PHOTOS" || { echo "no photos: carry runs/photos or install scikit-image"; exit 1; }
fi

# 2. train (SIGINT at the budget: the trainer checkpoints, validates and stops)
echo "== training"
timeout -s INT -k 60 "$TRAIN_BUDGET" "$PY" -m streamsr train --recipe "$RECIPE" --data "$PHOTOS" \
  --out "$RUN" --init "$INIT" --device "$DEVICE" --no-progress \
  --set max_steps="$STEPS" --set batch="$BATCH" --set num_workers="$WORKERS" "${EXTRA[@]}" ${SETS:-}
rc=$?
echo "== training rc=$rc after $(( SECONDS - START )) s"
BEST=$RUN/best.safetensors
[ -f "$BEST" ] || BEST=$RUN/model.safetensors
if [ ! -f "$BEST" ]; then echo "no weights were written"; exit 1; fi
cp "$RUN"/log.csv "$RUN"/recipe.toml "$OUT"/ 2>/dev/null
cp "$BEST" "$OUT/best.safetensors"
[ -f "$RUN/model.safetensors" ] && cp "$RUN/model.safetensors" "$OUT/model.safetensors"

# 3. curve
"$PY" scripts/plot_curves.py "$RUN" --csv "$OUT/curve.csv" --png "$OUT/curve.png" \
  || "$PY" scripts/plot_curves.py "$RUN" --csv "$OUT/curve.csv"

# 4. samples through the real pipeline
for clip in handheld dashcam; do
  args=()
  [ -n "$FRAMES" ] && args=(--frames "$FRAMES")
  "$PY" -m streamsr upscale "samples/$clip.mp4" "$OUT/$clip.mp4" --model "$OUT/best.safetensors" \
    --device "$DEVICE" --overwrite --no-progress "${args[@]}" \
  && "$PY" -m streamsr eval-video "$OUT/$clip.mp4" -r "samples/${clip}_gt.mp4" -i "samples/$clip.mp4" \
    --json --no-progress "${args[@]}" > "$OUT/$clip.json" \
  && echo "== $clip: $(cat "$OUT/$clip.json")"
done
echo "== done in $(( SECONDS - START )) s; results in $OUT"
