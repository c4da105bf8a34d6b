"""The convolutional sparse coding (CSC) layer of SDNet, its lambda control and residual.

The layer solves min_c 1/2 ||x - A^T c||^2 + lambda ||c||_1 + mu/2 ||c||^2 (c >= 0 optionally)
with `n_steps` unrolled FISTA iterations, exactly as design.md states the official code does.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlab.errors import RobustlabError

GOLDEN = (1 + math.sqrt(5)) / 2  # t after the second FISTA iteration, starting from t = 1
# solve_at's working set per chunk of (image, lambda) pairs: their code maps. On a CPU a chunk that stays in cache
# (8 MiB: 32 CIFAR code maps of SDNet-18's stem) ran Algorithm 1's per-image search fastest of 2 to 16 MiB
# (bench/adaptive.py); a GPU wants large launches instead.
SOLVE_CHUNK_BYTES = (8 << 20, 512 << 20)  # (cpu, cuda)
# Decoding into image-like inputs (few channels) without gradients goes through patch space (one matmul plus
# k * k shifted slices) instead of oneDNN's transposed convolution, which vectorizes over the output channels and
# so wastes most of its lanes on 3 of them. With gradients the slices' backward is far slower, and for 64 -> 64
# channels the matmul loses, so those stay on conv_transpose2d; the same trick for the forward 3 -> 64 convolution
# lost to oneDNN.
PATCH_MAX_CHANNELS = 4
# lambda is the CSC sparsity weight: models train near 0.1 and the official grid ends at 1.4 (design.md, Algorithm 1),
# so a lambda over 100 is a typo, not a setting (and one over 3.4e38 overflows the layer's float32)
MAX_LAMBDA = 100.0


def _adjoint_output_padding(in_hw: Sequence[int], code_hw: Sequence[int], kernel: int, stride: int,
                            padding: int) -> tuple[int, int]:
    # The official code hard-codes output_padding 1 for stride 2; deriving it from the sizes gives the
    # same value on even inputs and stays the exact adjoint on odd ones.
    def pad(size: int, code: int) -> int:
        return size - ((code - 1) * stride - 2 * padding + kernel)

    return pad(in_hw[0], code_hw[0]), pad(in_hw[1], code_hw[1])


def transpose_by_patches(code: torch.Tensor, weight: torch.Tensor, *, stride: int, padding: int,
                         out_hw: Sequence[int]) -> torch.Tensor:
    """conv_transpose2d(code, weight) cropped to out_hw, as one matmul into patch space and k * k shifted
    additions (see PATCH_MAX_CHANNELS)."""
    n, c_out, h, w = code.shape
    c_in, k = weight.shape[1], weight.shape[-1]
    # the transposed weight made contiguous: MKL's batched matmul is faster on it than on the transposed view
    # (same numbers)
    patches = torch.matmul(weight.reshape(c_out, -1).t().contiguous(), code.reshape(n, c_out, h * w))
    patches = patches.view(n, c_in, k, k, h, w)
    H, W = out_hw
    full = code.new_zeros(n, c_in, max((h - 1) * stride + k, H + padding), max((w - 1) * stride + k, W + padding))
    span_h, span_w = (h - 1) * stride + 1, (w - 1) * stride + 1
    for dy in range(k):
        for dx in range(k):
            full[:, :, dy:dy + span_h:stride, dx:dx + span_w:stride] += patches[:, :, dy, dx]
    return full[:, :, padding:padding + H, padding:padding + W]


def largest_eigenvalue(weight: torch.Tensor, in_shape: tuple[int, ...], *, stride: int, padding: int,
                       tol: float = 1e-6) -> float:
    """Largest eigenvalue of A^T A (A = conv2d with `weight`) on inputs of `in_shape`, converged by Lanczos.

    Plain power iteration (the official code: at most 50 iterations) stops 0.1-2.7% short on real layers, because
    a convolution's top eigenvalues lie close together; scipy's ARPACK (Lanczos) meets `tol` (on real layers the
    value then agrees with a 1e-12 run to a relative 1e-8: 0.02 s for a CIFAR stem, 8 s for a 224-pixel one). It runs
    in float64 on the CPU from a fixed start vector, so the same weights always give the same step."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    A = weight.detach().to("cpu", torch.float64)
    k = weight.shape[-1]
    n = math.prod(in_shape)
    code_hw = F.conv2d(torch.zeros(1, *in_shape, dtype=torch.float64), A, stride=stride, padding=padding).shape[-2:]
    op = _adjoint_output_padding(in_shape[1:], code_hw, k, stride, padding)

    def gram(v):
        x = torch.from_numpy(v.reshape(1, *in_shape))
        code = F.conv2d(x, A, stride=stride, padding=padding)
        return F.conv_transpose2d(code, A, stride=stride, padding=padding, output_padding=op).reshape(-1).numpy()

    start = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    if n == 1:
        return float(gram(start)[0] / start[0])
    eig = eigsh(LinearOperator((n, n), matvec=gram, dtype="float64"), k=1, which="LA", v0=start, tol=tol,
                return_eigenvectors=False)
    return float(eig[0])


class Dictionary(nn.Module):
    """The dictionary A (a conv2d weight) and its FISTA step size 0.9 / L.

    The step is recomputed only when the weight changes or the input size differs from the one it
    was computed for; a step loaded from a checkpoint is trusted for any input size.
    """

    step_size: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
                 w_norm: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("step_size", torch.ones(1))
        self.stride, self.padding, self.w_norm = stride, padding, w_norm
        self._valid_for: tuple[int, tuple[int, ...] | None] | None = None  # (weight version, input shape)
        self._step_value = 1.0

    def atoms(self) -> torch.Tensor:
        """The weight as used: every atom rescaled to unit L2 norm when w_norm is set."""
        if not self.w_norm:
            return self.weight
        norms = self.weight.flatten(1).norm(dim=1).clamp_min(1e-12)
        return self.weight / norms.view(-1, 1, 1, 1)

    def is_current(self) -> bool:
        """Whether step_size belongs to the present weights (computed or loaded since the last change)."""
        return self._valid_for is not None and self._valid_for[0] == self.weight._version

    def step(self, atoms: torch.Tensor, in_shape: tuple[int, ...]) -> float:
        """0.9 / L as a Python number (kept beside the buffer so the forward never waits on the device)."""
        valid = self._valid_for
        if valid is None or valid[0] != self.weight._version or valid[1] not in (None, in_shape):
            with torch.no_grad():
                eig = largest_eigenvalue(atoms.detach(), in_shape, stride=self.stride, padding=self.padding)
                self.step_size.fill_(0.9 / eig)
            self._valid_for = (self.weight._version, in_shape)
            self._step_value = 0.9 / eig
        return self._step_value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "step_size"
        if key in state_dict:  # official checkpoints may store it with shape [] or [1]
            state_dict[key] = state_dict[key].reshape(self.step_size.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in state_dict:
            self._valid_for = (self.weight._version, None)
            self._step_value = float(self.step_size)

    def _apply(self, fn, recurse=True):
        valid = self._valid_for
        out = super()._apply(fn, recurse)
        if valid is not None:  # moving devices or dtypes does not change A, so the step stays valid
            self._valid_for = (self.weight._version, valid[1])
        return out


Chunks = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (residuals, codes) of a chunk of images
GridSolver = Callable[[torch.Tensor, torch.Tensor], Chunks]  # solve_at's: (images, lambda index) -> chunks


class Presolved(NamedTuple):
    """A forward's code solved beforehand (Algorithm 1 per image), with its residual: the forward neither solves
    the layer nor decodes the code again."""
    code: torch.Tensor
    residual: torch.Tensor


class CSCConv2d(nn.Module):
    """A drop-in replacement for Conv2d whose output is the sparse code of its input (design.md)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
                 lmbda: float = 0.1, mu: float = 0.0, n_steps: int = 2, non_negative: bool = True,
                 w_norm: bool = True, n_dict: int = 1) -> None:
        super().__init__()
        if n_steps < 1:
            raise RobustlabError(f"CSC n_steps must be at least 1, got {n_steps}")
        self.dn = Dictionary(in_channels * n_dict, out_channels, kernel_size, stride=stride, padding=padding,
                             w_norm=w_norm)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, padding
        self.lmbda: float | torch.Tensor = float(lmbda)
        self.mu, self.n_steps = float(mu), n_steps
        self.non_negative, self.n_dict = non_negative, n_dict
        self.record_residual = False
        self.residual: torch.Tensor | None = None
        self._presolved: Presolved | None = None  # set only inside `presolved`

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, lmbda={self.lmbda}, mu={self.mu}, n_steps={self.n_steps}, "
                f"non_negative={self.non_negative}, n_dict={self.n_dict}")

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.n_dict, 1, 1) if self.n_dict > 1 else x

    def _operator(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """The lambda-free parts of a forward on x: atoms A, the conv weight W, the step s and the scale."""
        A = self.dn.atoms()
        s = self.dn.step(A, tuple(x.shape[1:]))
        # prox(base + s * conv(v)) with the step and the elastic-net scale 1 / (1 + mu s) folded into the (small)
        # conv weight instead of the (large) code maps
        scale = 1 / (1 + self.mu * s)
        return A, A * (s * scale), s, scale

    def _by_patches(self, x: torch.Tensor, A: torch.Tensor) -> bool:
        """Whether this forward decodes through patch space (see PATCH_MAX_CHANNELS)."""
        return x.shape[1] <= PATCH_MAX_CHANNELS and not (torch.is_grad_enabled() and (x.requires_grad or
                                                                                       A.requires_grad))

    def _decode(self, code: torch.Tensor, A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._by_patches(x, A):
            return transpose_by_patches(code, A, stride=self.stride, padding=self.padding, out_hw=x.shape[-2:])
        op = _adjoint_output_padding(x.shape[-2:], code.shape[-2:], self.kernel_size, self.stride, self.padding)
        return F.conv_transpose2d(code, A, stride=self.stride, padding=self.padding, output_padding=op)

    def _residual(self, x: torch.Tensor, A: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return (x - self._decode(code, A, x)).pow(2).sum(dim=(1, 2, 3)) / self.n_dict

    def _fista(self, x: torch.Tensor, A: torch.Tensor, W: torch.Tensor, scale: float, theta: float | torch.Tensor,
               first: torch.Tensor | None = None) -> torch.Tensor:
        """The code after n_steps FISTA steps with threshold theta (a number, or one per image as (N, 1, 1, 1));
        `first`, when given with a per-image theta, is conv(x, W), which does not depend on lambda (read only: it
        may be a view of a whole batch's)."""
        per_image = isinstance(theta, torch.Tensor)
        # a single non-negative threshold goes into the conv bias, saving a pass over the code maps
        bias = W.new_full((W.shape[0],), -theta) if self.non_negative and not isinstance(theta, torch.Tensor) else None

        def prox(z: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
            if per_image and self.non_negative:
                # before the base, as the scalar threshold in the conv bias is: the same numbers; the caller's
                # `first` is not written
                z = z - theta if z is first else z.sub_(theta)
            if base is not None:
                z.add_(base, alpha=scale)  # in place is safe: conv's backward does not need its output
            if self.non_negative:
                return F.relu_(z)
            if isinstance(theta, torch.Tensor):
                return z.sign() * F.relu(z.abs() - theta)
            return F.softshrink(z, theta)

        def conv(v: torch.Tensor) -> torch.Tensor:
            return F.conv2d(v, W, bias, stride=self.stride, padding=self.padding)

        c = prox(conv(x) if first is None else first, None)
        if self.n_steps >= 2:
            c_prev = c
            c = prox(conv(x - self._decode(c, A, x)), c)
            t = GOLDEN
            for _ in range(self.n_steps - 2):
                t_prev, t = t, (1 + math.sqrt(1 + 4 * t * t)) / 2
                a = (t_prev + t - 1) / t * c + (1 - t_prev) / t * c_prev
                c_prev = c
                c = prox(conv(x - self._decode(c, A, x)), a)
        return c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._tiled(x)
        A, W, s, scale = self._operator(x)
        given = self._presolved
        if given is not None:  # Algorithm 1 per image solved this layer at each lambda it selected
            if given.code.shape[0] != x.shape[0]:
                raise RobustlabError(f"the presolved code has {given.code.shape[0]} images but the batch has "
                                     f"{x.shape[0]}")
            c = given.code
        else:
            c = self._fista(x, A, W, scale, self._theta(x, s, scale))
        if self.record_residual:
            with torch.no_grad():
                self.residual = given.residual if given is not None else self._residual(x, A, c)
        return c

    @contextmanager
    def presolved(self, output: Presolved | None) -> Iterator[CSCConv2d]:
        """Inside the block the layer's forward returns `output` (its code and residual for the batch, solved
        beforehand) instead of solving; None: it solves as usual."""
        saved, self._presolved = self._presolved, output
        try:
            yield self
        finally:
            self._presolved = saved

    def _theta(self, x: torch.Tensor, s: float, scale: float) -> float | torch.Tensor:
        """The soft threshold of this forward: one number, or (N, 1, 1, 1) for one lambda per image."""
        if not isinstance(self.lmbda, torch.Tensor):
            return self.lmbda * s * scale
        if self.lmbda.shape != (x.shape[0],):  # one lambda per image (Algorithm 1, per image)
            raise RobustlabError(f"per-image lambda has shape {tuple(self.lmbda.shape)} but the batch has "
                                 f"{x.shape[0]} images")
        return (self.lmbda.double() * (s * scale)).to(x).view(-1, 1, 1, 1)  # rounded as _thetas rounds

    @staticmethod
    def _thetas(x: torch.Tensor, lambdas: Sequence[float], s: float, scale: float) -> torch.Tensor:
        """The soft threshold of each grid lambda, rounded as a forward at that lambda rounds it."""
        return torch.tensor([lmbda * s * scale for lmbda in lambdas], dtype=x.dtype, device=x.device)

    def _images_per_chunk(self, x: torch.Tensor) -> int:
        """How many (image, lambda) pairs' code maps fit in one chunk's working set (SOLVE_CHUNK_BYTES)."""
        code_bytes = self.out_channels * x[0, 0].numel() // self.stride ** 2 * x.element_size()
        return max(1, SOLVE_CHUNK_BYTES[x.device.type == "cuda"] // code_bytes)

    @torch.no_grad()
    def solve_at(self, x: torch.Tensor, lambdas: Sequence[float]) -> GridSolver:
        """A function (images, index) -> (residuals, codes) of those images of x at lambdas[index], a lambda per
        (image, index) pair, chunk by chunk in order (Algorithm 1's selection): what a forward without gradients
        records and outputs at that lambda, to float rounding (tested): the kernels PyTorch picks, and so the order
        of their sums, depend on the CPU, the thread count and the batch, so bit equality with a forward holds on no
        machine in general. The lambda-free first conv runs once, here, for every call."""
        x = self._tiled(x)
        A, W, s, scale = self._operator(x)
        thetas = self._thetas(x, lambdas, s, scale)
        first = F.conv2d(x, W, stride=self.stride, padding=self.padding)
        chunk = self._images_per_chunk(x)

        @torch.no_grad()
        def at(images: torch.Tensor, index: torch.Tensor) -> Chunks:
            images, theta = images.to(x.device), thetas[index.to(x.device)].view(-1, 1, 1, 1)
            for some, th in zip(images.split(chunk), theta.split(chunk)):  # gathered per chunk: still in cache
                rows = _rows(some)
                xs = rows(x)
                code = self._fista(xs, A, W, scale, th, rows(first))
                yield self._residual(xs, A, code), code
        return at


def _rows(index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function t -> t[index] along the first dimension: a view when the rows are consecutive (Algorithm 1's
    first pass and per-set residuals take the images in order), else a copy by index_select (3x faster here than
    advanced indexing's general kernel)."""
    if len(index) and bool((index.diff() == 1).all()):
        start = int(index[0])
        return lambda t: t.narrow(0, start, len(index))
    return lambda t: t.index_select(0, index)


def csc_layers(model: nn.Module) -> list[CSCConv2d]:
    """The model's CSC layers in definition order (layer 0 is the first)."""
    return [m for m in model.modules() if isinstance(m, CSCConv2d)]


def csc_layer(model: nn.Module, layer: int = 0) -> CSCConv2d:
    """The `layer`-th CSC layer, with a clear error when the model has none or fewer."""
    layers = csc_layers(model)
    if not layers:
        raise RobustlabError(f"model {type(model).__name__} has no CSC layer; lambda and the residual exist only "
                             "for SDNet models (sdnet18, sdnet34, ...)")
    if not -len(layers) <= layer < len(layers):
        raise RobustlabError(f"CSC layer {layer} does not exist: the model has {len(layers)} (0..{len(layers) - 1})")
    return layers[layer]


def set_lambda(model: nn.Module, value: float | torch.Tensor, layer: int | None = 0) -> None:
    """Set the sparsity weight lambda of one CSC layer (or of all with layer=None); a 1-d tensor sets one
    lambda per image of the next batches.

        >>> robustlab.set_lambda(model, 0.2)                 # the first CSC layer
        >>> robustlab.set_lambda(model, 0.2, layer=None)     # every CSC layer
    """
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or not torch.isfinite(value).all() or (value < 0).any():
            raise RobustlabError(f"a per-image lambda must be a 1-d tensor of finite values >= 0, got {value}")
    elif not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise RobustlabError(f"lambda must be a finite number >= 0, got {value!r}")
    else:
        value = float(value)
    targets = csc_layers(model) if layer is None else [csc_layer(model, layer)]
    if not targets:
        csc_layer(model, 0)  # raises the "no CSC layer" message
    for m in targets:
        m.lmbda = value


@contextmanager
def restored(layer: CSCConv2d) -> Iterator[CSCConv2d]:
    """Lambda and residual recording may be changed inside; both are put back on exit."""
    saved = layer.lmbda, layer.record_residual
    try:
        yield layer
    finally:
        layer.lmbda, layer.record_residual = saved


def get_lambda(model: nn.Module, layer: int = 0) -> float | torch.Tensor:
    return csc_layer(model, layer).lmbda


def last_residual(model: nn.Module, layer: int = 0) -> torch.Tensor:
    """Per-image reconstruction residual of a CSC layer from the model's last forward.

        >>> logits = model(x)
        >>> r = robustlab.last_residual(model)               # shape (len(x),)
    """
    m = csc_layer(model, layer)
    if not m.record_residual:
        raise RobustlabError(f"CSC layer {layer} does not record its residual (only the first does by default); set "
                             f"robustlab.models.csc_layer(model, {layer}).record_residual = True before the forward")
    if m.residual is None:
        raise RobustlabError("no residual yet: run a forward pass through the model first")
    return m.residual
