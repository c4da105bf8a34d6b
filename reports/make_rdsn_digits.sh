#!/usr/bin/env bash
# The random depthwise signed network against the trained digits models (SDNet-18, ResNet-18), all shipped in the
# zoo: clean top-1/top-2, the 15 benchmark corruptions (CIFAR table, severities 1, 3, 5), black-box Square and
# white-box PGD on the first 200 test images (attacks/digits-blackbox.toml), and PGD-10 transferred from the two
# trained models. Writes reports/rdsn-digits/ (results.csv, report.md, report.html, figures/).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
models=zoo:rdsn-digits,zoo:sdnet18-digits,zoo:resnet18-digits
robustlab eval --ckpt "$models" --dataset digits --corruptions cifar10-c --severities 1,3,5 \
    --out "$tmp/corruptions" --quiet > /dev/null
robustlab eval --ckpt "$models" --dataset digits --n 200 --attacks digits-blackbox --out "$tmp/attacks" \
    --quiet > /dev/null
robustlab eval --ckpt "$models" --dataset digits --attack pgd-linf --eps 8/255,16/255 --steps 10 \
    --transfer-from zoo:resnet18-digits,zoo:sdnet18-digits --skip-diagnostics --out "$tmp/transfer" --quiet > /dev/null
rm -rf reports/rdsn-digits
robustlab report "$tmp/corruptions" "$tmp/attacks" "$tmp/transfer" --out reports/rdsn-digits > /dev/null
python - "$tmp" <<'PY'
import sys
import pandas as pd
import torch
from robustlab.checkpoints import load_model
from robustlab.data import load_dataset
from robustlab.fit_rdsn import topk_accuracy
tmp = sys.argv[1]
df = pd.concat([pd.read_csv(f"{tmp}/{run}/results.csv") for run in ("corruptions", "attacks", "transfer")])
df.to_csv("reports/rdsn-digits/results.csv", index=False)
test = load_dataset("digits")
images, labels = next(test.batches(len(test)))
print("model               top-1 %  top-2 %")
for name in ("rdsn-digits", "sdnet18-digits", "resnet18-digits"):
    with torch.no_grad():
        logits = load_model(f"zoo:{name}")(images.float() / 255)
    print(f"{name:18s} {100 * topk_accuracy(logits, labels, 1):7.2f}  {100 * topk_accuracy(logits, labels, 2):7.2f}")
PY
