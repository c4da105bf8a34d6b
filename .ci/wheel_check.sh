#!/usr/bin/env bash
# Build the wheel, install it (not editable) into a fresh virtual environment that borrows only the dependencies
# of the active one, and run the demo and a suite-based evaluation from it, outside the repository: the shipped
# suites, zoo checkpoints and data must come from the package.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps -w "$work/dist" "$repo"
python -m venv "$work/venv"
deps=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
site=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$deps" > "$site/borrowed-dependencies.pth"  # a plain path: the editable robustlab there is not activated
"$work/venv/bin/python" -m pip install -q --no-deps "$work"/dist/robustlab-*.whl
cd "$work"
where=$("$work/venv/bin/python" -c "import robustlab; print(robustlab.__file__)")
case "$where" in "$work/venv/"*) ;; *) echo "wheel check: robustlab imported from $where, not the wheel"; exit 1;; esac
"$work/venv/bin/robustlab" demo --n 50 --out "$work/demo" --quiet > "$work/demo.txt"
"$work/venv/bin/robustlab" eval --ckpt zoo:sdnet18-digits --dataset digits --n 10 --corruptions cifar10-c \
    --severities 1 --out "$work/c10c" --quiet > "$work/eval.txt"
rows=$(($(wc -l < "$work/c10c/results.csv") - 1))
[ "$rows" -eq 16 ] || { echo "wheel check: cifar10-c gave $rows rows, expected 16 (clean + 15)"; exit 1; }
echo "wheel check: installed wheel ran the demo and cifar10-c ($rows rows) from $where"
