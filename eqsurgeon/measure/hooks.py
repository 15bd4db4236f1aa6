"""Forward pre-hooks that stream every concat input's moments, and the per-batch moment math.

Each hook slices the fusing layer's input by the site's channel ranges and queues the slice's mean and
variance on the device; the accumulator merges them exactly (Chan et al.) in Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from eqsurgeon.call_args import first_input
from eqsurgeon.records import FusionSite, Moments

# A forward pre-hook registered ``with_kwargs=True``: (module, args, kwargs) -> None.
_PreHook = Callable[[nn.Module, tuple[object, ...], Mapping[str, object]], None]


class MomentHooks:
    """Forward pre-hooks that stream every subject's moments in float64.

    Use as a context manager; hooks are removed on exit. ``moments()`` may be read at any time.

    >>> conv = nn.Conv2d(2, 1, 1)
    >>> from eqsurgeon.sites import Subject
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 1), "a"), Subject((1, 2), "b")))
    >>> with MomentHooks(conv, [site]) as hooks:
    ...     _ = conv(torch.zeros(1, 2, 2, 2))
    >>> hooks.moments()[""][1].count
    4
    """

    def __init__(self, model: nn.Module, sites: Iterable[FusionSite]) -> None:
        self.model = model
        self.sites = [s for s in sites if s.ok]
        self._acc = {s.layer: [_Accumulator() for _ in s.subjects] for s in self.sites}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> MomentHooks:
        for site in self.sites:
            module = self.model.get_submodule(site.layer)
            # with_kwargs: a layer called ``conv(input=x)`` gets its input as a keyword.
            self._handles.append(module.register_forward_pre_hook(self._hook(site), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def moments(self) -> dict[str, tuple[Moments, ...]]:
        # One host sync for all pending batch sums (hooks only queue device work; see _Accumulator).
        accs = [a for group in self._acc.values() for a in group]
        pending = [t for a in accs for _, mean, var in a.pending for t in (mean, var)]
        values = iter(torch.stack([t.to(pending[0].device) for t in pending]).tolist() if pending else ())
        for a in accs:
            for n, _, _ in a.pending:
                a.absorb(n, next(values), next(values))
            a.pending.clear()
        return {layer: tuple(a.moments() for a in accs) for layer, accs in self._acc.items()}

    def _hook(self, site: FusionSite) -> _PreHook:
        accs = self._acc[site.layer]

        def hook(module: nn.Module, args: tuple[object, ...], kwargs: Mapping[str, object]) -> None:
            x = first_input(args, kwargs, module.forward)
            assert isinstance(x, torch.Tensor), f"{site.layer} was called without its input tensor"
            for subject, acc in zip(site.subjects, accs):
                start, stop = subject.channels
                acc.add(x.narrow(site.channel_dim, start, stop - start))

        return hook


class _Accumulator:
    """Chan et al.'s parallel merge of (count, mean, M2) in Python floats (float64), plus each batch's
    (count, mean, variance) for the standard error of the pooled std."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.per_batch: list[tuple[int, float, float]] = []  # (n, mean, var) of each absorbed batch
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (n, mean, var) per batch

    @property
    def batches(self) -> int:
        return len(self.per_batch)

    def add(self, x: torch.Tensor) -> None:
        n = x.numel()
        if n == 0:
            return
        # Kept on the device: converting to Python floats here would stall the GPU mid-forward twice
        # per subject. ``MomentHooks.moments()`` absorbs them all after one sync.
        self.pending.append((n, *batch_moments(x, one_pass=x.is_cuda)))

    def absorb(self, n: int, mean_b: float, var_b: float) -> None:
        var_b = max(var_b, 0.0)
        delta = mean_b - self.mean
        total = self.n + n
        self.mean += delta * n / total
        self.m2 += var_b * n + delta * delta * self.n * n / total
        self.n = total
        self.per_batch.append((n, mean_b, var_b))

    def moments(self) -> Moments:
        if self.n == 0:
            return Moments(0, math.nan, math.nan, 0)
        var = self.m2 / self.n
        return Moments(self.n, self.mean, var, self.batches, self._std_rel_se(var))

    def _std_rel_se(self, var: float) -> float:
        """Delta-method standard error of the pooled std, relative to it, with batches as the units.

        The pooled variance is the count-weighted mean of each batch's second moment about the global
        mean, c_b = var_b + (mean_b - mean)², and (to first order) the global mean's own error does not
        move it. So var's standard error is that of a weighted mean of the c_b, and std's relative error
        is half var's. Counting the (mean_b - mean)² term matters: features such as a pyramid-pooling
        branch vary mostly between images, which a spread of per-batch stds alone does not see.
        """
        b = self.batches
        if b < 2 or var <= 0:
            return math.inf
        spread = sum((n * (v + (m - self.mean) ** 2 - var)) ** 2 for n, m, v in self.per_batch)
        var_se = math.sqrt(spread * b / (b - 1)) / self.n
        return var_se / (2 * var)


def batch_moments(x: torch.Tensor, one_pass: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of all of ``x`` as float64 0-dim tensors on ``x``'s device.

    ``one_pass`` is for a GPU, where reading the data is the whole cost. float32 ``x`` is read once
    (``torch.var_mean``: Welford), not three times (a sum and a sum of squares, which also writes a
    squared copy). float16/bfloat16 ``x`` (autocast) on CUDA is never copied to float32: see
    ``_low_precision_moments``. On a CPU, float32 partial sums over each plane (``_partial_moments``),
    added in float64; where the mean is far beyond the spread (mean²/var > ``_FAR``), where those sums
    would cancel, exact float64 moments of a float64 copy.

    >>> [round(float(t), 6) for t in batch_moments(torch.tensor([1.0, 2.0, 3.0, 4.0]), one_pass=True)]
    [2.5, 1.25]
    """
    if one_pass and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        return _low_precision_moments(x)
    if one_pass:
        var, mean = torch.var_mean(x.float(), correction=0)
        return mean.double(), var.double()
    x = x.float()
    mean, var = _partial_moments(x)
    if _cancels(float(mean), float(var)):
        exact = x.double()
        mean = exact.mean()
        var = (exact - mean).square().mean()
    return mean, var


_FAR = 25.0  # mean² / var beyond which float32 partial sums may lose more than ~3e-6 of the variance


def _cancels(mean: float, var: float) -> bool:
    """Whether the mean lies so far beyond the spread (mean²/var > ``_FAR``) that partial sums cancel.

    >>> _cancels(5.0, 1.0), _cancels(5.1, 1.0), _cancels(-6.0, 1.0)
    (False, True, True)
    """
    return var * _FAR < mean * mean


def _partial_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of a CPU float32 tensor from float32 sums and 2-norms over its inner dims.

    The inner reductions are contiguous and vectorized (four 2×512×64×64 channel slices: 4 ms, against
    75 ms for float64 sums of squared copies); only their partials are added in float64. Measured
    relative error of the variance: under 1e-6 for mean²/var ≤ 9, under 3e-6 at ``_FAR``, on planes of
    up to 256×256; far below the sampling error of any calibration (σ's standard error ≥ 1e-3).
    """
    n = x.numel()
    dims = tuple(range(min(2, x.dim() - 1), x.dim()))
    mean = x.sum(dim=dims).double().sum() / n
    square = torch.linalg.vector_norm(x, dim=dims).double().square().sum() / n
    return mean, square - mean * mean


def _low_precision_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of a float16/bfloat16 CUDA tensor from a float32 sum and a float32 2-norm.

    CUDA's mixed-precision reductions read the tensor in its own dtype and accumulate in float32
    (tree-wise), so nothing is copied: two reads of half the bytes, against a float32 copy's
    write-and-read. Not for CPU tensors: the CPU norm kernel sums tens of millions of squares in float32
    with a 1% error, where float64 sums of a float32 copy are exact.
    """
    n = x.numel()
    mean = x.sum(dtype=torch.float32).double() / n
    square = torch.linalg.vector_norm(x, dtype=torch.float32).double().square() / n
    return mean, square - mean * mean
