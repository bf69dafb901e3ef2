#!/usr/bin/env bash
# Short GPU training check: prints training images/s for mobilenet_v2 at 96 px on CIFAR-10,
# with mixed precision and XLA. Needs ../shared/data and ../shared/weights (see their READMEs)
# and a TensorFlow build with CUDA (`pip install tensorflow[and-cuda]==2.21.0` instead of
# tensorflow-cpu). Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/gpu_check}
DATA=../shared/data/cifar10.npz
WEIGHTS=../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
[ -f "$DATA" ] || { echo "missing $DATA (see ../shared/data/README.md)"; exit 1; }
[ -f "$WEIGHTS" ] || { echo "missing $WEIGHTS (see ../shared/weights/README.md)"; exit 1; }
"$PY" -c "import tensorflow as tf; print('GPUs:', tf.config.list_physical_devices('GPU'))"
rm -rf "$OUT"
"$PY" -m mghash_tf train --out "$OUT" --data "npz:$DATA" --backbone mobilenet_v2 \
  --weights "$WEIGHTS" --image-size 96 --input-size 32 --layout mg64 --batch-size 256 \
  --frozen-epochs 1 --finetune-epochs 1 --max-train 20000 --mixed-precision --jit-compile \
  --val-database-size 2000 --progress 2
"$PY" - "$OUT" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
print("training images/s (median over epochs):", m["train_images_per_second"])
print("validation mAP:", m["val"])
PY
