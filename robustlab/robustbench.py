"""RobustBench's models, read from its local model directory (never downloaded here)."""
from __future__ import annotations

import os
from pathlib import Path

from robustlab.errors import RobustlabError
from robustlab.models import ModelConfig, RobustModel
from robustlab.safe_loading import first_line, plain_state_dict, read_checkpoint

ROBUSTBENCH_DIR_ENV = "ROBUSTLAB_ROBUSTBENCH_DIR"  # where RobustBench's model files lie (default ./models)


def load_robustbench(spec: str) -> RobustModel:
    """`[DATASET/THREAT/]NAME` from RobustBench's local model directory (never downloaded here)."""
    from robustlab.compat import patch_third_party
    patch_third_party()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    parts = spec.split("/")
    if len(parts) not in (1, 3):
        raise RobustlabError(f"robustbench:{spec}: write robustbench:NAME (cifar10, Linf) or "
                             "robustbench:DATASET/THREAT/NAME")
    dataset, threat, name = parts if len(parts) == 3 else ("cifar10", "Linf", parts[0])
    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    except (ValueError, KeyError):
        raise RobustlabError(f"robustbench:{spec}: unknown dataset/threat {dataset}/{threat}; datasets "
                             f"{[d.value for d in BenchmarkDataset]}, threats {[t.value for t in ThreatModel]}"
                             ) from None
    if name not in zoo:
        from robustlab.registry import Registry
        known: Registry[object] = Registry(f"RobustBench {dataset}/{threat} model")
        for n in zoo:
            known.register(n, n)
        raise RobustlabError(known.unknown_message(name))
    model_dir = Path(os.environ.get(ROBUSTBENCH_DIR_ENV, "models"))
    path = model_dir / dataset / threat / f"{name}.pt"
    if not path.is_file():
        raise RobustlabError(f"robustbench:{spec} needs a download: {path} is not there; fetch it on a machine with "
                             f"internet (robustbench.utils.load_model) and copy it there, or set {ROBUSTBENCH_DIR_ENV}")
    net = zoo[name]["model"]()
    sd = plain_state_dict(read_checkpoint(path), path)  # RobustBench itself loads without weights_only
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:  # torch lists every key: keep the first line
        raise RobustlabError(f"{path} does not hold the weights of RobustBench's {name} ({first_line(e)}); copy "
                             "the file of that model there again") from None
    classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
    size = 224 if dataset == "imagenet" else 32
    # RobustBench models take [0, 1] pixels and normalize inside themselves
    config = ModelConfig(arch=f"robustbench:{dataset}/{threat}/{name}", num_classes=classes, input_size=size,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dataset=dataset)
    model = RobustModel(net, config, name=name)
    model.checkpoint_path = path
    return model
