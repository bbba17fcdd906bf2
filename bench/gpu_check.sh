#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU, from the repository root, with the project's
# Python dependencies installed (pip install -e '.[dev]'; the servers, prefect, mlflow and dvc
# are not used: this imports only pipeline_tasks/, bench/, torch and torchvision).
#
#   bash bench/gpu_check.sh            # everything, about 10 minutes on an H200
#   QUICK=1 bash bench/gpu_check.sh    # a smaller pass: fewer images and epochs
#
# 1. the GPU tests (tests/gpu: augmentation, streamed batches, every SSL method, fine-tuning
#    and evaluation on CUDA);
# 2. the pretraining throughput bench at 32 px: ResNet-18 with the CIFAR stem, 50,000 images,
#    2 views, batch 512, bf16, with and without torch.compile and streamed from the memory map
#    (goals on an H200: an epoch under 2.5 s, data wait under 2%);
# 3. the same at 224 px with ResNet-50;
# 4. pretrain, fine-tune and evaluate end to end on CUDA (bench/gpu_end_to_end.py).
# Exits non-zero when a step fails; prints every step's figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine" >&2
  exit 2
fi
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)'
if [ -n "${QUICK:-}" ]; then IMAGES=10000 EPOCHS=2 BIG=1000; else IMAGES=50000 EPOCHS=3 BIG=5000; fi

echo "== 1. GPU tests"
"$PY" -m pytest -q -p no:cacheprovider tests/gpu

echo "== 2. pretraining throughput, 32 px, ResNet-18 (CIFAR stem)"
"$PY" bench/pretrain_throughput.py --images "$IMAGES" --size 32 --encoder resnet18 --batch 512 \
  --epochs "$EPOCHS" --precision bf16 --variants eager,compiled,streamed

echo "== 3. pretraining throughput, 224 px, ResNet-50"
"$PY" bench/pretrain_throughput.py --images "$BIG" --size 224 --encoder resnet50 --batch 256 \
  --epochs 2 --precision bf16 --variants eager,compiled

echo "== 4. pretrain, fine-tune and evaluate on CUDA"
"$PY" bench/gpu_end_to_end.py --device cuda
