#!/usr/bin/env bash
# The Fashion-MNIST evidence in reports/fashion/ as measured on 2026-12-01 (README "Evidence on Fashion-MNIST"):
# runs/*.csv, calibration*.json, report.md/html and figures/. About 3 hours on 2 CPU cores (the 10,000-image
# corruption sweep of two models is one of them, the RDSN's half an hour, AutoAttack another half hour).
#   bash reports/fashion/make_evidence.sh [DATA_DIR]      (DATA_DIR: the full Fashion-MNIST IDX files)
# The committed CSVs were written by schema 2 (before lambda_low/lambda_high); this script, run now, writes
# schema 3 rows with the same counts. `--select-n all`: per-set selection on every image, as they were made.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-/usr/share/datasets/fashion-mnist}
out=reports/fashion
runs=$(mktemp -d)
c=(--dataset fashion-mnist --data-dir "$data" --quiet)
calib="$runs/calibration-impulse.json"
robustlab calibrate --ckpt zoo:sdnet18-fashion "${c[@]}" --n 500 --out "$runs/calibration.json"
robustlab calibrate --ckpt zoo:sdnet18-fashion "${c[@]}" --noise impulse --n 500 --out "$calib"
# all 10,000 test images: 15 corruptions x 5 severities, SDNet-18 fixed and Algorithm 1 per set, ResNet-18
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion "${c[@]}" --n 10000 --corruptions cifar10-c \
    --adaptive-lambda "$calib" --select-n all --out "$runs/main"
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion "${c[@]}" --n 1000 --attacks fashion-pgd \
    --out "$runs/pgd"
robustlab eval --ckpt zoo:rdsn-fashion,zoo:sdnet18-fashion "${c[@]}" --n 1000 --attack pgd-linf --eps 2/255,8/255 \
    --steps 10 --transfer-from zoo:resnet18-fashion --skip-diagnostics --out "$runs/transfer"
robustlab eval --ckpt zoo:rdsn-fashion "${c[@]}" --n 10000 --corruptions cifar10-c --out "$runs/rdsn"
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion "${c[@]}" --n 1000 --attack autoattack --eps 4/255 \
    --skip-diagnostics --out "$runs/autoattack"
robustlab eval --ckpt zoo:sdnet18-fashion "${c[@]}" --n 500 --attacks fashion-pgd \
    --lambda-sweep 0.1,0.13,0.16,0.2 --skip-diagnostics --out "$runs/pgd-lambda"
robustlab eval --ckpt zoo:rdsn-fashion "${c[@]}" --n 500 --attacks fashion-blackbox --skip-diagnostics \
    --out "$runs/rdsn-square"
robustlab eval --ckpt zoo:sdnet18-fashion "${c[@]}" --n 10000 --corruptions cifar10-c --adaptive-lambda "$calib" \
    --per-image --out "$runs/per-image"
# the lambda sweeps of the two stems (first 2,000 test images)
robustlab eval --ckpt zoo:sdnet18-fashion "${c[@]}" --n 2000 \
    --corruptions gaussian_noise,shot_noise,impulse_noise,speckle_noise \
    --lambda-sweep 0.1,0.13,0.16,0.2,0.25,0.3,0.4,0.5,0.7,1.0 --out "$runs/sweep-stem64"
robustlab eval --ckpt "$out/models/sdnet18-stem16-fashion.pt" "${c[@]}" --n 2000 \
    --corruptions gaussian_noise,impulse_noise --lambda-sweep 0.1,0.13,0.16,0.2 --out "$runs/sweep-stem16"
python reports/fashion/bn_reestimate.py --data-dir "$data" --out "$out/bn_reestimate.csv"
names=(main pgd transfer rdsn autoattack pgd-lambda rdsn-square per-image sweep-stem64 sweep-stem16)
mkdir -p "$out/runs"
for r in "${names[@]}"; do cp "$runs/$r/results.csv" "$out/runs/$r.csv"; done
cp "$runs/calibration.json" "$out/calibration.json"
cp "$calib" "$out/calibration-impulse.json"
cp "$calib" "$runs/main/calibration.json"  # the report draws the calibration of a run that holds one
robustlab report "${names[@]/#/$runs/}" --baseline "resnet18-fashion (main)" --out "$out"
rm -rf "$runs"
