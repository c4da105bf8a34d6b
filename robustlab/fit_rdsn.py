"""Fitting an RDSN: random features (no backpropagation), standardization, a linear SVM as the head, and k-NN
retrieval precision as an extra metric."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from robustlab.counting import checked_batches
from robustlab.data import ImageSet, load_dataset, to_pixels
from robustlab.errors import RobustlabError
from robustlab.models import ModelConfig, RobustModel, build_net
from robustlab.models.rdsn import RDSN
from robustlab.progress import ProgressFactory
from robustlab.train import normalization

MIN_FEATURE_STD = 1e-6  # a feature constant over the training set carries nothing; do not blow it up


@dataclass(frozen=True)
class RDSNConfig:
    dataset: str
    k: int = 2048
    depth: int = 3
    kernel_size: int = 3
    pool: str = "none"
    seed: int = 0
    C: float = 0.01
    knn: int = 10
    batch_size: int = 128


def extract_features(model: RobustModel, net: RDSN, data: ImageSet, *, batch_size: int, device: torch.device,
                     progress: ProgressFactory, desc: str) -> torch.Tensor:
    """The raw k block features of every image of `data` (float64, on the CPU); `net` is `model`'s network."""
    out = []
    with torch.inference_mode():
        for images, _ in progress(checked_batches(data, batch_size, None), total=math.ceil(len(data) / batch_size),
                                  desc=desc):
            out.append(net.features(model.normalize(to_pixels(images, device))).double().cpu())
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    return float((scores.topk(min(k, scores.shape[1]), dim=1).indices == labels[:, None]).any(dim=1).double().mean())


def knn_precision(train: np.ndarray, train_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                  k: int) -> float:
    """Retrieval precision@k: the mean fraction of each query's k nearest training images that share its label."""
    from sklearn.neighbors import NearestNeighbors
    index = NearestNeighbors(n_neighbors=min(k, len(train))).fit(train)
    _, nearest = index.kneighbors(queries)
    return float((train_labels[nearest] == query_labels[:, None]).mean())


def fit_rdsn(cfg: RDSNConfig, *, data_dir: str | None, device: torch.device,
             progress: ProgressFactory) -> tuple[RobustModel, dict[str, float]]:
    """Build the random network, fit the linear SVM head on the train split; returns the model (eval mode) and its
    test-split metrics (top-1, top-2, k-NN precision@k)."""
    from sklearn.svm import LinearSVC
    train_set = load_dataset(cfg.dataset, data_dir, "train")
    test_set = load_dataset(cfg.dataset, data_dir)
    if train_set.num_classes < 2:
        raise RobustlabError(f"{cfg.dataset} has {train_set.num_classes} class; a linear SVM needs at least 2")
    mean, std = normalization(train_set)
    config = ModelConfig(arch="rdsn", num_classes=train_set.num_classes, input_size=train_set.image_size[0],
                         mean=mean, std=std, dataset=cfg.dataset,
                         arch_kwargs={"k": cfg.k, "depth": cfg.depth, "kernel_size": cfg.kernel_size, "pool": cfg.pool,
                                      "seed": cfg.seed, "in_channels": len(mean)})
    net = build_net(config)
    assert isinstance(net, RDSN), type(net)  # the "rdsn" architecture builds an RDSN
    model = RobustModel(net, config, name=f"rdsn-{cfg.dataset}").to(device).eval()
    feats = {split: extract_features(model, net, data, batch_size=cfg.batch_size, device=device, progress=progress,
                                     desc=f"features ({split})")
             for split, data in (("train", train_set), ("test", test_set))}
    net.feature_mean.copy_(feats["train"].mean(0).float())
    net.feature_std.copy_(feats["train"].std(0).clamp_min(MIN_FEATURE_STD).float())
    z_train = net.standardize(feats["train"].float().to(device)).cpu().numpy()
    z_test = net.standardize(feats["test"].float().to(device)).cpu().numpy()
    y_train, y_test = train_set.label_array(), test_set.label_array()
    svm = LinearSVC(C=cfg.C, max_iter=20000, random_state=cfg.seed).fit(z_train, y_train)
    coef, intercept = svm.coef_, svm.intercept_
    if coef.shape[0] == 1:  # binary: scikit-learn keeps one hyperplane, the logits need one score per class
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(coef))
        net.head.bias.copy_(torch.from_numpy(intercept))
    scores = torch.from_numpy(z_test) @ torch.from_numpy(coef).float().T + torch.from_numpy(intercept).float()
    labels = torch.from_numpy(y_test)
    metrics = {"top1": topk_accuracy(scores, labels, 1), "top2": topk_accuracy(scores, labels, 2),
               f"knn_precision@{cfg.knn}": knn_precision(z_train, y_train, z_test, y_test, cfg.knn),
               "train_top1": float(svm.score(z_train, y_train)), "n_train": len(y_train), "n_test": len(y_test)}
    return model, metrics


def fit_record(cfg: RDSNConfig, metrics: dict[str, float], test_split: str) -> dict:
    """What an RDSN checkpoint records about how it was made."""
    return {"rdsn_fit": {**asdict(cfg), **metrics, "test_split": test_split}}
