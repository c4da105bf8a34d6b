#!/usr/bin/env bash
# Evidence on Fashion-MNIST (reports/fashion/): the shipped checkpoints under the 15 corruptions x 5 severities,
# PGD-10 versus eps, transfer between the models, Square on the RDSN, Algorithm 1 (fixed versus adaptive, per set
# and per image) on the noise corruptions, the lambda sweeps of both SDNet stems, and one report.
#   bash reports/fashion/make_evidence.sh [DATA_DIR] [N]     (N: first N test images; 10000 = the full test set)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-/usr/share/datasets/fashion-mnist}
n=${2:-1000}
out=reports/fashion
runs=$(mktemp -d)
common=(--dataset fashion-mnist --data-dir "$data" --quiet)
robustlab calibrate --ckpt zoo:sdnet18-fashion "${common[@]}" --n 500 --out "$out/calibration.json" --overwrite
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion "${common[@]}" --n "$n" --corruptions cifar10-c \
    --adaptive-lambda "$out/calibration.json" --attacks fashion-pgd --out "$runs/main"
robustlab eval --ckpt zoo:sdnet18-fashion "${common[@]}" --n "$n" --adaptive-lambda "$out/calibration.json" \
    --per-image --corruptions gaussian_noise,shot_noise,impulse_noise,speckle_noise --out "$runs/per-image"
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion,zoo:rdsn-fashion "${common[@]}" --n "$((n / 5))" \
    --attack pgd-linf --eps 8/255 --steps 10 --transfer-from zoo:resnet18-fashion,zoo:sdnet18-fashion \
    --skip-diagnostics --out "$runs/transfer"
robustlab eval --ckpt zoo:rdsn-fashion "${common[@]}" --n "$((n / 10))" --corruptions gaussian_noise,fog,contrast \
    --severities 3 --attacks fashion-blackbox --out "$runs/rdsn"
for stem in 64 16; do
    robustlab eval --ckpt "$out/models/sdnet18-stem$stem-fashion.pt" "${common[@]}" --n "$((n * 2))" \
        --corruptions gaussian_noise,shot_noise,impulse_noise,speckle_noise \
        --lambda-sweep 0.1,0.13,0.16,0.2,0.25,0.3,0.4,0.5,0.7,1.0 --out "$runs/sweep-stem$stem"
done
mkdir -p "$out/runs"
for r in main per-image transfer rdsn sweep-stem64 sweep-stem16; do
    cp "$runs/$r/results.csv" "$out/runs/$r.csv"
done
robustlab report "$runs"/* --baseline resnet18-fashion --out "$out"
rm -rf "$runs"
