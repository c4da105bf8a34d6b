#!/usr/bin/env bash
# The Fashion-MNIST evidence in reports/fashion/ exactly as measured on 2026-12-01 (README "Evidence on
# Fashion-MNIST"): runs/*.csv, calibration.json, report.md/html and figures/. About 15 minutes on 2 CPU cores.
#   bash reports/fashion/make_evidence.sh [DATA_DIR]      (DATA_DIR: the full Fashion-MNIST IDX files)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-/usr/share/datasets/fashion-mnist}
out=reports/fashion
runs=$(mktemp -d)
common=(--dataset fashion-mnist --data-dir "$data" --quiet)
robustlab calibrate --ckpt zoo:sdnet18-fashion "${common[@]}" --n 500 --out "$runs/main/calibration.json"
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion "${common[@]}" --n 500 --corruptions cifar10-c \
    --attacks fashion-pgd --out "$runs/main"
robustlab eval --ckpt zoo:rdsn-fashion,zoo:sdnet18-fashion "${common[@]}" --n 200 --attack pgd-linf \
    --eps 2/255,8/255 --steps 10 --transfer-from zoo:resnet18-fashion --skip-diagnostics --out "$runs/transfer"
robustlab eval --ckpt zoo:rdsn-fashion "${common[@]}" --n 100 --attacks fashion-blackbox --skip-diagnostics \
    --out "$runs/rdsn-square"
robustlab eval --ckpt zoo:sdnet18-fashion "${common[@]}" --n 2000 \
    --corruptions gaussian_noise,shot_noise,impulse_noise,speckle_noise \
    --lambda-sweep 0.1,0.13,0.16,0.2,0.25,0.3,0.4,0.5,0.7,1.0 --out "$runs/sweep-stem64"
robustlab eval --ckpt "$out/models/sdnet18-stem16-fashion.pt" "${common[@]}" --n 2000 \
    --corruptions gaussian_noise,impulse_noise --lambda-sweep 0.1,0.13,0.16,0.2 --out "$runs/sweep-stem16"
mkdir -p "$out/runs"
for r in main transfer rdsn-square sweep-stem64 sweep-stem16; do cp "$runs/$r/results.csv" "$out/runs/$r.csv"; done
cp "$runs/main/calibration.json" "$out/calibration.json"
robustlab report "$runs"/main "$runs"/transfer "$runs"/rdsn-square "$runs"/sweep-stem64 "$runs"/sweep-stem16 \
    --baseline resnet18-fashion --out "$out"
rm -rf "$runs"
