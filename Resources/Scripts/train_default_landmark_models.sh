#!/usr/bin/env bash
# Train the bundled landmark models (labelfree/weights/landmarks_2d.pt, landmarks_3d.pt) exactly
# as shipped: synthetic populations are written to files first, then trained through
# labelfree.landmarks.train.train_from_files (the path users take), then scored on held-out
# images with known warps; the scores go into the model cards.
#
# Usage: Resources/Scripts/train_default_landmark_models.sh [WORKDIR]
# Took 540 s (2-D, 240 epochs; equivariance runs the network twice per image) and 1064 s (3-D, 250 epochs) on one core each here, side by side. One thread per process: on a shared
# 2-core machine a second torch thread costs several times more CPU than it saves.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${1:-$(mktemp -d)}"
WEIGHTS="$ROOT/labelfree/weights"
SCRIPT="$HERE/make_landmark_training_data.py"
export OMP_NUM_THREADS=1
mkdir -p "$WEIGHTS"

# 2-D: 130 Shepp-Logan phantoms at 128x128 (100 train of which 20 validate, 30 test).
python "$SCRIPT" phantom "$WORK/phantom" --n-train 100 --n-test 30 --size 128 --seed 1
python "$SCRIPT" train "$WORK/phantom" "$WEIGHTS/landmarks_2d.pt" --landmarks 26 \
    --epochs 240 --lr 1e-3 --batch-size 16 --seed 0 --head heatmap --bending 0 \
    --equivariance 3000 \
    --description "Shepp-Logan phantoms under random smooth TPS warps, 128x128, 26 landmarks + 4 corners, heatmap head (prior faded over the first quarter), equivariance 3000, no bending"
python "$SCRIPT" evaluate "$WEIGHTS/landmarks_2d.pt" "$WORK/phantom"

# 3-D: 80 warps of the MNI152 T1 brain (nilearn), cropped to the brain and resampled to 64^3.
python "$SCRIPT" mni "$WORK/mni64" --n-train 60 --n-test 20 --size 64 --sigma-mm 4 --seed 1
python "$SCRIPT" train "$WORK/mni64" "$WEIGHTS/landmarks_3d.pt" --landmarks 40 \
    --epochs 250 --input-size 48 --lr 1e-3 --batch-size 8 --seed 0 --head heatmap \
    --equivariance 300 --equivariance-px 2 --equivariance-shift-px 2 \
    --description "MNI152 T1 brain under random smooth TPS warps (sigma 4 mm), 64^3 files, 48^3 network input, 40 landmarks + 8 corners, heatmap head (prior faded over the first quarter), equivariance 300 with 2 px warps and a 2 px global shift"
python "$SCRIPT" evaluate "$WEIGHTS/landmarks_3d.pt" "$WORK/mni64" --full-volume
