#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv (torch==2.13.0 first, as the README does), and run
# the installed `fusionseg` from outside the source tree: `fusionseg info`, then a tiny training
# run on rendered synthcity and one `fusionseg predict` of its checkpoint. A module, data file or
# entry point missing from the wheel fails here, where the editable install of the tests cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fusionseg-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . 2>/dev/null \
  || "$PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/fusionseg-*.whl)
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q torch==2.13.0
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"

cd "$WORK"   # away from src/: only the installed wheel can be imported
FS="$WORK/venv/bin/fusionseg"
"$FS" info
"$FS" data synth city --out data --train 4 --val 2 --size 64 --seed 0
cat > tiny.yaml <<'YAML'
name: wheel_check
seed: 0
model:
  name: sum_fusion
  backbone: mit_b0
  modalities: [rgb, depth]
  decoder_dim: 16
  backbone_kwargs: {embed_dims: [8, 16, 32, 64], num_heads: [1, 1, 1, 1], depths: [1, 1, 1, 1]}
data: {dataset: deliver, root: data, crop_size: [32, 32], batch_size: 2, val_batch_size: 2,
       num_workers: 0}
train: {max_epochs: 1, max_steps: 2, progress: false, out_dir: runs}
YAML
"$FS" train tiny.yaml --run-dir runs/tiny
"$FS" predict --ckpt runs/tiny/checkpoints/last.ckpt --input data --out preds
test -n "$(find preds -name '*.png' | head -1)"
echo "wheel check: $(basename "$WHEEL") installs, fusionseg info, train and predict ran"
