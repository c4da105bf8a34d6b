#!/usr/bin/env bash
# Train the Fashion-MNIST checkpoints on the full 60,000 training images (about 1.5 hours on 2 CPU cores):
# SDNet-18 with a 64-atom CSC stem (as the official SDNet-18) and with a 16-atom one, both on a width-16 body,
# the ResNet-18 of that body, and the RDSN. Seeded; each reports its accuracy on the full 10,000 test images.
#   bash reports/fashion/train_models.sh /usr/share/datasets/fashion-mnist OUT_DIR
set -euo pipefail
data=${1:-/usr/share/datasets/fashion-mnist}
out=${2:-reports/fashion/models}
mkdir -p "$out"
common=(--dataset fashion-mnist --data-dir "$data" --width 0.25 --epochs 5 --batch-size 128 --lr 0.05 --quiet)
robustlab train --arch sdnet18 "${common[@]}" --stem-width 64 --out "$out/sdnet18-stem64-fashion.pt"
robustlab train --arch sdnet18 "${common[@]}" --out "$out/sdnet18-stem16-fashion.pt"
robustlab train --arch resnet18 "${common[@]}" --out "$out/resnet18-fashion.pt"
robustlab fit-rdsn --dataset fashion-mnist --data-dir "$data" --pool avg --out "$out/rdsn-fashion.pt" --quiet
