#!/usr/bin/env bash
# The project's own regression gate: evaluate the shipped checkpoints on fixed subsets (digits: clean, three
# corruptions at severities 3 and 5, PGD at eps 1/255 and 2/255, SDNet's lambda fixed and adaptive; Fashion-MNIST's
# built-in subset: the same corruptions and attacks for SDNet-18 and ResNet-18, the RDSN clean) and compare with the
# committed baselines, paired per image where both carry outcomes. `bash reports/ci_gate.sh --update` rewrites
# reports/baseline*.csv and their per-image outcomes (reports/outcomes/) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
robustlab eval --ckpt zoo:sdnet18-digits,zoo:resnet18-digits --dataset digits --n 200 \
    --corruptions gaussian_noise,fog,contrast --severities 3,5 --attacks digits-small \
    --adaptive-lambda reports/adaptive-digits-calibration.json --out "$out/digits" --quiet > /dev/null
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion,zoo:rdsn-fashion --dataset fashion-mnist --n 200 \
    --corruptions gaussian_noise,fog,contrast --severities 3,5 --out "$out/fashion" --quiet > /dev/null
robustlab eval --ckpt zoo:sdnet18-fashion,zoo:resnet18-fashion --dataset fashion-mnist --n 200 \
    --attacks digits-small --out "$out/fashion-pgd" --quiet > /dev/null
if [ "${1:-}" = "--update" ]; then
    cp "$out/digits/results.csv" reports/baseline.csv
    cp "$out/fashion/results.csv" reports/baseline-fashion.csv
    cp "$out/fashion-pgd/results.csv" reports/baseline-fashion-pgd.csv
    # each row names its outcome file (by the cell's identity) relative to its results file; a cell in two runs
    # (fashion's clean rows) has one file, and both runs must have written the same bytes into it
    rm -rf reports/outcomes && mkdir reports/outcomes
    for f in "$out"/digits/outcomes/*.npz "$out"/fashion/outcomes/*.npz "$out"/fashion-pgd/outcomes/*.npz; do
        kept="reports/outcomes/$(basename "$f")"
        if [ -e "$kept" ] && ! cmp -s "$f" "$kept"; then
            echo "ci_gate: two runs wrote different outcomes for one cell ($(basename "$f"))" >&2
            exit 1
        fi
        cp "$f" "$kept"
    done
    echo "reports/baseline*.csv and reports/outcomes/ updated"
else
    robustlab regress reports/baseline.csv "$out/digits/results.csv"
    robustlab regress reports/baseline-fashion.csv "$out/fashion/results.csv"
    robustlab regress reports/baseline-fashion-pgd.csv "$out/fashion-pgd/results.csv"
fi
rm -rf "$out"
