"""Independent references written from design.md's formulas, used only by the tests.

The CSC layer is re-derived with dense matrices: the convolution is the matrix D whose columns are
conv2d applied to the basis images, so D^T is the exact adjoint and eig(D^T D) gives L directly.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def conv_matrix(weight: torch.Tensor, in_shape: tuple[int, int, int], stride: int, padding: int) -> torch.Tensor:
    """D with D @ vec(x) == vec(conv2d(x, weight)) for one image of in_shape (float64)."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    cols = F.conv2d(basis, weight.double(), stride=stride, padding=padding)
    return cols.reshape(n, -1).T.contiguous(), cols.shape[1:]


def unit_atoms(weight: torch.Tensor) -> torch.Tensor:
    return weight / weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def dense_step(weight: torch.Tensor, in_shape, stride: int, padding: int) -> float:
    D, _ = conv_matrix(weight, in_shape, stride, padding)
    return 0.9 / float(np.linalg.eigvalsh((D.T @ D).numpy()).max())


def dense_csc(x: torch.Tensor, weight: torch.Tensor, *, stride: int, padding: int, lmbda: float, mu: float = 0.0,
              n_steps: int = 2, non_negative: bool = True, w_norm: bool = True, n_dict: int = 1,
              step: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(code, residual) of design.md's FISTA, per image with dense matrices in float64."""
    x = x.double().repeat(1, n_dict, 1, 1)
    A = unit_atoms(weight.double()) if w_norm else weight.double()
    D, code_shape = conv_matrix(A, tuple(x.shape[1:]), stride, padding)
    s = dense_step(A, tuple(x.shape[1:]), stride, padding) if step is None else step
    theta = lmbda * s

    def prox(v: np.ndarray) -> np.ndarray:
        v, t = v / (1 + mu * s), theta / (1 + mu * s)
        out = np.sign(v) * np.maximum(np.abs(v) - t, 0)
        return np.maximum(out, 0) if non_negative else out

    codes, residuals = [], []
    Dn = D.numpy()
    for img in x.reshape(len(x), -1).numpy():
        c = prox(s * Dn @ img)
        if n_steps >= 2:
            c_prev = c
            c = prox(c + s * Dn @ (img - Dn.T @ c))
            t = (1 + math.sqrt(5)) / 2
            for _ in range(n_steps - 2):
                t_prev = t
                t = (1 + math.sqrt(1 + 4 * t_prev ** 2)) / 2
                a = (t_prev + t - 1) / t * c + (1 - t_prev) / t * c_prev
                c_prev = c
                c = prox(a + s * Dn @ (img - Dn.T @ c))
        codes.append(c.reshape(code_shape))
        residuals.append(((img - Dn.T @ c) ** 2).sum() / n_dict)
    return torch.from_numpy(np.stack(codes)), torch.tensor(residuals)


def _bn(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        training=False, eps=1e-5)


def conv_fista(x: torch.Tensor, weight: torch.Tensor, step: float, *, stride: int, padding: int, lmbda: float,
               mu: float = 0.0, n_steps: int = 2, non_negative: bool = True, w_norm: bool = True,
               n_dict: int = 1) -> torch.Tensor:
    """design.md's FISTA with convolutions (output padding 1 for stride 2, as stated there) and a given step."""
    x = x.repeat(1, n_dict, 1, 1)
    A = unit_atoms(weight) if w_norm else weight
    conv = lambda v: F.conv2d(v, A, stride=stride, padding=padding)  # noqa: E731
    deconv = lambda c: F.conv_transpose2d(c, A, stride=stride, padding=padding,  # noqa: E731
                                          output_padding=1 if stride == 2 else 0)
    theta = lmbda * step

    def prox(v: torch.Tensor) -> torch.Tensor:
        out = F.softshrink(v / (1 + mu * step), theta / (1 + mu * step))
        return F.relu(out) if non_negative else out

    c = prox(step * conv(x))
    if n_steps >= 2:
        c_prev = c
        c = prox(c + step * conv(x - deconv(c)))
        t = (1 + math.sqrt(5)) / 2
        for _ in range(n_steps - 2):
            t_prev = t
            t = (1 + math.sqrt(1 + 4 * t_prev ** 2)) / 2
            a = (t_prev + t - 1) / t * c + (1 - t_prev) / t * c_prev
            c_prev = c
            c = prox(a + step * conv(x - deconv(c)))
    return c


def official_forward(x: torch.Tensor, sd: dict, *, mean, std, depth: int = 18, stem: str = "cifar",
                     all_layers: bool = False, shortcut: bool = True, codes: list | None = None,
                     fit_bn: torch.Generator | None = None, **csc) -> torch.Tensor:
    """Logits of design.md's SDNet-18/34 (-all, with or without shortcut; CIFAR or ImageNet stem) or ResNet from an
    official state_dict (keys without 'module.', '-all' blocks under `.layers.`) with its stored step sizes,
    pixels in [0, 1]. Every CSC layer's code is appended to `codes` in order. `csc` holds lmbda, mu, n_steps,
    non_negative, w_norm and n_dict.

    With `fit_bn`, every BatchNorm's running statistics are first set (in `sd`) to this batch's, perturbed at
    random: on random weights, fixed statistics let the differences between images die out layer by layer."""
    x = (x - torch.tensor(mean).view(1, 3, 1, 1).to(x)) / torch.tensor(std).view(1, 3, 1, 1).to(x)

    def bn(v: torch.Tensor, p: str) -> torch.Tensor:
        if fit_bn is not None:
            var, mean_ = torch.var_mean(v, dim=(0, 2, 3), unbiased=False)
            noise = torch.rand(2, v.shape[1], generator=fit_bn, dtype=v.dtype)
            sd[p + ".running_mean"] = mean_ + 0.2 * var.sqrt() * (noise[0] - 0.5)
            sd[p + ".running_var"] = var * (0.7 + 0.6 * noise[1])
        return _bn(v, sd, p)

    def conv(v: torch.Tensor, p: str, stride: int, padding: int) -> torch.Tensor:
        if p + ".dn.weight" not in sd:
            return F.conv2d(v, sd[p + ".weight"], stride=stride, padding=padding)
        step = float(sd[p + ".dn.step_size"].reshape(-1)[0])
        c = conv_fista(v, sd[p + ".dn.weight"], step, stride=stride, padding=padding, **csc)
        if codes is not None:
            codes.append(c)
        return c

    sparse_stem = "layer0.0.dn.weight" in sd
    out = bn(conv(x, "layer0.0", *((2, 3) if stem == "imagenet" else (1, 1))), "layer0.1")
    if not sparse_stem:
        out = F.relu(out)  # the ResNet baseline's stem; SDNet's has no relu after its CSC stem
    if stem == "imagenet":
        out = conv(out, "layer0.2", 2, 1) if all_layers else F.max_pool2d(out, 3, 2, 1)
    for stage, blocks in enumerate({18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[depth], start=1):
        for b in range(blocks):
            p = f"layer{stage}.layers.{b}" if all_layers else f"layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            y = bn(conv(out, p + ".conv1", stride, 1), p + ".bn1")
            if not all_layers:
                y = F.relu(y)
            y = bn(conv(y, p + ".conv2", 1, 1), p + ".bn2")
            if all_layers and not shortcut:
                out = y  # the official -all block without shortcut has no relu at all
                continue
            short = out
            if p + ".shortcut.0.weight" in sd:
                short = bn(F.conv2d(out, sd[p + ".shortcut.0.weight"], stride=stride), p + ".shortcut.1")
            out = F.relu(y + short)
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def official_sdnet18_forward(x: torch.Tensor, sd: dict, *, lmbda: float, mean, std) -> torch.Tensor:
    """SDNet-18 (CIFAR stem, two FISTA steps) from an official state_dict."""
    return official_forward(x, sd, mean=mean, std=std, lmbda=lmbda)


def official_sdnet18_state_dict(*, width: float = 0.25, num_classes: int = 10, seed: int = 0,
                                all_layers: bool = False, shortcut: bool = True, stem: str = "cifar",
                                sparse_stem: bool = True, depth: int = 18, n_dict: int = 1) -> dict[str, torch.Tensor]:
    """Random tensors under the official key names of design.md (SDNet-18/34, -all, or the ResNet baseline), with
    BatchNorm statistics far from the identity."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(key: str, out_c: int, in_c: int, k: int, sparse: bool) -> None:
        in_c = in_c * n_dict if sparse else in_c
        w = torch.randn(out_c, in_c, k, k, generator=g) * math.sqrt(2 / (in_c * k * k))
        if sparse:
            sd[key + ".dn.weight"] = w
            sd[key + ".dn.step_size"] = torch.tensor([0.05 + 0.1 * torch.rand(1, generator=g).item()])
        else:
            sd[key + ".weight"] = w

    def bn(key: str, c: int) -> None:
        sd[key + ".weight"] = 0.5 + torch.rand(c, generator=g)
        sd[key + ".bias"] = 0.3 * torch.randn(c, generator=g)
        sd[key + ".running_mean"] = 0.3 * torch.randn(c, generator=g)
        sd[key + ".running_var"] = 0.2 + 2 * torch.rand(c, generator=g)
        sd[key + ".num_batches_tracked"] = torch.tensor(100)

    widths = [round(w * width) for w in (64, 128, 256, 512)]
    conv("layer0.0", widths[0], 3, 7 if stem == "imagenet" else 3, sparse_stem)
    bn("layer0.1", widths[0])
    if stem == "imagenet" and all_layers:
        conv("layer0.2", widths[0], widths[0], 3, True)  # the official -all ImageNet stem's strided CSC layer
    in_c = widths[0]
    for stage, (planes, blocks) in enumerate(zip(widths, {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[depth]), start=1):
        for b in range(blocks):
            p = f"layer{stage}.layers.{b}" if all_layers else f"layer{stage}.{b}"
            conv(p + ".conv1", planes, in_c, 3, all_layers)
            bn(p + ".bn1", planes)
            conv(p + ".conv2", planes, planes, 3, all_layers)
            bn(p + ".bn2", planes)
            if shortcut and stage > 1 and b == 0:
                conv(p + ".shortcut.0", planes, in_c, 1, False)
                bn(p + ".shortcut.1", planes)
            in_c = planes
    sd["linear.weight"] = torch.randn(num_classes, in_c, generator=g) / math.sqrt(in_c)
    sd["linear.bias"] = 0.1 * torch.randn(num_classes, generator=g)
    return sd


def ndimage_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian (mode 'nearest', truncate 4) over the two spatial axes of an (H, W, C) image."""
    from scipy import ndimage
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def python_glass_blur(x: np.ndarray, c, rng) -> np.ndarray:
    """The engine's glass blur as it was before its loop was compiled (one draw per pixel, in Python)."""
    sigma, delta, iterations = c
    img = np.uint8(np.clip(ndimage_gaussian(x, sigma), 0, 1) * 255)
    h, w = img.shape[:2]
    for _ in range(iterations):
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=2)
                img[i, j] = img[i + dy, j + dx]
    return np.clip(ndimage_gaussian(img / 255.0, sigma), 0, 1) * 255
