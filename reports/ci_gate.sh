#!/usr/bin/env bash
# The project's own regression gate: evaluate the shipped digits checkpoints on a fixed subset (clean, three
# corruptions at severities 3 and 5, PGD at eps 1/255 and 2/255, SDNet's lambda fixed and adaptive) and compare
# with the committed baseline. `bash reports/ci_gate.sh --update` rewrites reports/baseline.csv instead.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)/ci
robustlab eval --ckpt zoo:sdnet18-digits,zoo:resnet18-digits --dataset digits --n 200 \
    --corruptions gaussian_noise,fog,contrast --severities 3,5 --attacks digits-small \
    --adaptive-lambda reports/adaptive-digits-calibration.json --out "$out" --quiet > /dev/null
if [ "${1:-}" = "--update" ]; then
    cp "$out/results.csv" reports/baseline.csv
    echo "reports/baseline.csv updated"
else
    robustlab regress reports/baseline.csv "$out/results.csv"
fi
