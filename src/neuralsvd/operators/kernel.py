r"""Kernel integral operators $(Tf)(x) = E_{x'\sim p}[k(x, x') f(x')]$ on $L^2(p)$, and their references.

Conventions (on top of :mod:`neuralsvd.operators.base`): functions live in ``L²(p)`` for the sampling
measure ``p`` (a :class:`~neuralsvd.sampling.Sampler`, or the empirical measure of a data set), where
``T`` is self-adjoint for a symmetric kernel; eigenvalues are those of ``T`` (descending), exact
eigenfunctions are orthonormal in ``L²(p)`` and model outputs are used as they are.

**Estimator.** A batch drawn i.i.d. from ``p`` is split into halves ``A`` and ``B``; for ``i ∈ A``,
``(Tf)(x_i) = mean_{j∈B} k(x_i, x_j) f(x_j)`` and vice versa. The half that supplies the average is
independent of ``x_i``, so the estimate is unbiased (no self-pairs ``k(x_i, x_i)``); it costs ``n²/2``
kernel values per batch.

**Evaluation.** :meth:`KernelOperator.evaluation_batches` yields batches ``[q; q]`` (an equal-weight rule
``q`` twice), on which the same split estimator *is* the rule ``mean_j k(x_i, q_j) f(q_j)``: the data
itself when the measure is empirical (exact estimates), scrambled Sobol points mapped through the normal
quantile for Gaussian measures (quasi-Monte Carlo: errors far below Monte Carlo's ``n^-½``), fresh samples
otherwise.

**References.** :class:`GaussianRBF`: the RBF kernel under a Gaussian measure in closed form (Rasmussen &
Williams, *GPML* §4.3.1: geometric eigenvalues, Hermite–Gaussian eigenfunctions; products over axes).
Data measures: the eigendecomposition of the kernel matrix ``K/N`` with its Nyström extension (exact for
the empirical operator). :func:`nystrom`: the Nyström baseline on ``n`` sampled points as a
:class:`~neuralsvd.FitResult`, for :func:`neuralsvd.evaluate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..numerics import quadrature as quad
from ..numerics.sampling import Gaussian, Sampler
from ..training.result import FitResult
from .base import Function, Operator, check_model_output
from .kernels import RBF, Kernel
from .multi_index import top_multi_indices

__all__ = [
    "GaussianRBF",
    "KernelOperator",
    "NystromExtension",
    "gaussian_qmc",
    "gaussian_quadrature",
    "normalized_hermite_e",
    "nystrom",
    "top_multi_indices",
]

#: data sets up to this size are evaluated on the whole population, and have a dense reference solution
POPULATION_LIMIT = 8192


# --- Gaussian-measure helpers (shared with the paired-sample operators) ----------------------------------


def gaussian_qmc(
    num: int, mean: Tensor, cholesky: Tensor, generator: torch.Generator | None, dtype: torch.dtype
) -> Tensor:
    """``num`` quasi-random points of ``N(mean, L Lᵀ)``: scrambled Sobol ``u``, ``x = mean + Φ⁻¹(u) Lᵀ``.

    Shapes: ``mean (d,)``, ``cholesky (d, d)`` -> ``(num, d)``. The scrambling seed is drawn from
    ``generator`` (reproducible); points land on ``generator.device``.
    """
    d = cholesky.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=device))
    u = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(num, dtype=torch.float64)
    eps = torch.finfo(torch.float64).eps
    z = torch.special.ndtri(u.clamp(eps, 1 - eps))  # (num, d)
    x = mean.double() + z @ cholesky.double().T
    return x.to(device=device, dtype=dtype)


def gaussian_quadrature(mean: Tensor, cholesky: Tensor, half_width: float = 12.0) -> quad.Quadrature:
    """A rule for ``E_{N(mean, L Lᵀ)}``: tensor Gauss–Legendre on ``z ∈ [-half_width, half_width]^d``
    weighted by the standard normal density, mapped by ``x = mean + z Lᵀ`` (``d ≤ 3``). Weights sum to 1
    up to ``e^{-half_width²/2}``."""
    d = cholesky.shape[0]
    if d > 3:
        raise ValueError(f"tensor quadrature is for d <= 3, got d = {d}")
    panels, nodes = {1: (16, 16), 2: (12, 12), 3: (8, 8)}[d]
    rule = quad.box([half_width] * d, panels, nodes)
    z = rule.points  # (N, d)
    density = torch.exp(-0.5 * (z * z).sum(1)) / (2 * math.pi) ** (d / 2)
    return quad.Quadrature(mean.double() + z @ cholesky.double().T, rule.weights * density)


def normalized_hermite_e(x: Tensor, kmax: int) -> Tensor:
    """``He_k(x) / sqrt(k!)``, ``k = 0..kmax`` (orthonormal under ``N(0, 1)``): ``x (n,) -> (n, kmax+1)``."""
    h = [torch.ones_like(x), x]
    for k in range(1, kmax):
        h.append((x * h[k] - math.sqrt(k) * h[k - 1]) / math.sqrt(k + 1))
    return torch.stack(h[: kmax + 1], 1)


# --- Nyström ------------------------------------------------------------------------------------------


class NystromExtension(nn.Module):
    r"""The Nyström extension of eigenvectors of ``K/n`` on ``anchors (n, d)``:
    $\phi_l(x) = \frac{1}{n\lambda_l}\sum_j k(x, a_j)\, \sqrt n\, v_{jl}$, which equals $\sqrt n\, v_l$ on the
    anchors and is an exact eigenfunction of the empirical operator. ``x (m, d) -> (m, L)``.

    The coefficients are a frozen parameter (so that the module has a dtype/device like a trained model).
    """

    def __init__(self, kernel: Kernel, anchors: Tensor, eigenvalues: Tensor, eigenvectors: Tensor):
        super().__init__()
        n = anchors.shape[0]
        self.kernel = kernel
        self.register_buffer("anchors", anchors)
        coefficients = eigenvectors / (math.sqrt(n) * eigenvalues)  # (n, L)
        self.coefficients = nn.Parameter(coefficients, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.kernel(x, self.anchors.to(x)) @ self.coefficients.to(x)

    @classmethod
    def fit_points(
        cls, kernel: Kernel, points: Tensor, num_modes: int | None = None
    ) -> tuple[Tensor, NystromExtension]:
        """Top ``num_modes`` eigenpairs of ``K/n`` on ``points (n, d)`` in float64 (default: all with
        eigenvalue above ``1e-10`` times the largest): ``(eigenvalues (L,), extension)``."""
        points = points.double()
        n = points.shape[0]
        w, v = torch.linalg.eigh(kernel(points, points) / n)
        w, v = w.flip(0), v.flip(1)
        positive = int((w > 1e-10 * w[0].clamp_min(0)).sum())
        num_modes = positive if num_modes is None else num_modes
        if not 1 <= num_modes <= positive:
            raise ValueError(
                f"num_modes={num_modes}, but K/n on {n} points has {positive} positive eigenvalues"
            )
        return w[:num_modes], cls(kernel, points, w[:num_modes], v[:, :num_modes])


def nystrom(operator: KernelOperator, num_points: int, num_modes: int, seed: int = 0) -> FitResult:
    """The Nyström baseline: eigendecomposition of ``K/n`` on ``num_points`` samples of the operator's
    measure plus the out-of-sample extension, returned as a :class:`~neuralsvd.FitResult` (no training
    history) that :func:`neuralsvd.evaluate` accepts like a trained model. Cost ``O(n³)``.
    """
    t0 = time.perf_counter()
    points = operator.sample(num_points, torch.Generator().manual_seed(seed), torch.float64)
    eigenvalues, extension = NystromExtension.fit_points(operator.kernel, points, num_modes)
    wall = time.perf_counter() - t0
    order = torch.arange(num_modes)
    empty = {"step": torch.arange(0), "loss": torch.empty(0), "eigenvalues": torch.empty(0, num_modes)}
    return FitResult(
        model=extension.eval(),
        operator=operator,
        eigenvalues=eigenvalues,
        learned_eigenvalues=eigenvalues,
        order=order,
        norms=torch.ones(num_modes, dtype=torch.float64),
        history=empty,
        steps=0,
        wall_seconds=wall,
        steps_per_second=math.nan,
    )


# --- the operator -------------------------------------------------------------------------------------------


class KernelOperator(Operator):
    """``(Tf)(x) = E_{x'~p}[k(x, x') f(x')]`` for a symmetric kernel on ``L²(p)`` (module docstring).

    Args:
        kernel: a callable ``k(x (n, d), y (m, d)) -> (n, m)``, e.g. :class:`~.kernels.RBF`.
        sampler_or_data: a :class:`~neuralsvd.sampling.Sampler` (``p`` is its distribution) or data
            ``(N, d)`` (``p`` is the empirical measure; batches are drawn with replacement, so the split
            estimator is unbiased for ``K/N``).
    """

    pointwise = False  # Tf at one half of the batch is averaged over the other half

    def __init__(self, kernel: Kernel, sampler_or_data: Sampler | Tensor | np.ndarray):
        super().__init__()
        if not callable(kernel):
            raise TypeError(f"kernel must be a callable k(x, y) -> (n, m), got {type(kernel).__name__}")
        self.kernel = kernel
        if isinstance(sampler_or_data, Sampler):
            self.sampler, self.data = sampler_or_data, None
            self.dim = sampler_or_data.dim
        else:
            data = torch.as_tensor(sampler_or_data)
            if data.ndim != 2 or data.shape[0] < 2 or not data.is_floating_point():
                raise ValueError(
                    f"data must be a float array (N, d) with N >= 2, got shape {tuple(data.shape)} "
                    f"dtype {data.dtype}"
                )
            if not bool(torch.isfinite(data).all()):
                raise ValueError("data contains non-finite values")
            self.sampler = None
            self.register_buffer("data", data)
            self.dim = data.shape[1]
        self._reference: tuple[Tensor, NystromExtension] | None = None

    def sample(self, n, generator=None, dtype=None):
        if self.data is None:
            return self.sampler.sample(n, generator, dtype)
        device = generator.device if generator is not None else self.data.device
        index = torch.randint(self.data.shape[0], (n,), generator=generator, device=device)
        return self.data.to(device)[index].to(dtype or torch.get_default_dtype())

    def validate(self, x: Tensor) -> None:
        k = self.kernel(x, x)
        if not isinstance(k, Tensor) or k.shape != (x.shape[0], x.shape[0]):
            shape = tuple(k.shape) if isinstance(k, Tensor) else type(k).__name__
            raise ValueError(
                f"kernel must map x (n, d), y (m, d) to (n, m) = {(x.shape[0],) * 2}; got {shape}"
            )
        if not bool(torch.isfinite(k).all()):
            raise ValueError("kernel returned non-finite values")
        if not torch.allclose(k, k.T, rtol=1e-5, atol=1e-6 * float(k.abs().max())):
            raise ValueError("kernel is not symmetric: k(x, y) must equal k(y, x)")

    def _apply_operator(self, f: Function, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"KernelOperator needs batches of at least 2 points (two halves), got {n}")
        fx = f(x)  # (n, L)
        check_model_output(fx, n)
        a, b = slice(0, n // 2), slice(n // 2, n)  # the halves A, B
        with torch.no_grad():
            k = self.kernel(x[a], x[b]).to(fx)  # (|A|, |B|)
            tfx = torch.cat([k @ fx[b] / k.shape[1], k.T @ fx[a] / k.shape[0]])  # (n, L)
        return fx, tfx

    def _evaluates_population(self) -> bool:
        return self.data is not None and self.data.shape[0] <= POPULATION_LIMIT

    def evaluation_is_iid(self, num_batches, batch_size, svd=False):
        return not self._evaluates_population() and not isinstance(self.sampler, Gaussian)

    def evaluation_batches(self, num_batches, batch_size, generator, dtype, svd=False):
        """Batches ``[q; q]`` of an equal-weight rule ``q`` (module docstring): the population for data up
        to :data:`POPULATION_LIMIT` points, quasi-Monte Carlo for Gaussian measures, else fresh samples."""
        if self._evaluates_population():
            device = generator.device if generator is not None else self.data.device
            q = self.data.to(device=device, dtype=dtype or torch.get_default_dtype())
            yield torch.cat([q, q])
            return
        if isinstance(self.sampler, Gaussian):
            mean = self.sampler.mean
            points = gaussian_qmc(
                num_batches * batch_size,
                mean,
                torch.diag(self.sampler.std),
                generator,
                dtype or torch.get_default_dtype(),
            )
            for q in points.split(batch_size):
                yield torch.cat([q, q])
            return
        for _ in range(num_batches):
            yield self.sample(batch_size, generator, dtype)

    def quadrature(self) -> quad.Quadrature:
        """The empirical measure for data; a tensor Gauss–Legendre rule for Gaussian measures (d ≤ 3);
        else ``2¹⁶`` samples with equal weights."""
        if self.data is not None:
            n = self.data.shape[0]
            return quad.Quadrature(self.data.double(), torch.full((n,), 1.0 / n, dtype=torch.float64))
        if isinstance(self.sampler, Gaussian) and self.dim <= 3:
            mean = self.sampler.mean
            return gaussian_quadrature(mean, torch.diag(self.sampler.std))
        x = self.sampler.sample(2**16, torch.Generator().manual_seed(0), torch.float64)
        return quad.Quadrature(x, torch.full((x.shape[0],), 2.0**-16, dtype=torch.float64))

    # -- dense reference for data measures -------------------------------------------------------------------
    def _data_reference(self) -> tuple[Tensor, NystromExtension]:
        if self.data is None or self.data.shape[0] > POPULATION_LIMIT:
            raise NotImplementedError(
                "KernelOperator has a reference solution only for data of at most "
                f"{POPULATION_LIMIT} points (the eigendecomposition of K/N)"
            )
        if self._reference is None:
            self._reference = NystromExtension.fit_points(self.kernel, self.data.cpu())
        return self._reference

    def _check_reference_modes(self, num_modes: int) -> None:
        available = self._data_reference()[0].shape[0]
        if num_modes > available:
            raise ValueError(f"num_modes={num_modes} exceeds the {available} positive eigenvalues of K/N")

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        """Data measures: the positive eigenvalues of ``K/N``."""
        self._check_reference_modes(num_modes)
        return self._data_reference()[0][:num_modes]

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        """Data measures: the Nyström extension of the eigenvectors of ``K/N`` (exact for the empirical
        operator), orthonormal under the empirical measure."""
        self._check_reference_modes(num_modes)
        with torch.no_grad():
            return self._data_reference()[1](x.double())[:, :num_modes].to(x.device)


class GaussianRBF(KernelOperator):
    r"""The RBF kernel ``exp(-γ|x - x'|²)`` under ``p = N(mean, diag(std²))`` on ``R^dim``, in closed form.

    Per axis (GPML §4.3.1) with $a = 1/(4\sigma^2)$, $b = \gamma$, $c = \sqrt{a^2 + 2ab}$, $A = a + b + c$,
    $B = b/A$: eigenvalues $\lambda_k = \sqrt{2a/A}\, B^k$ and eigenfunctions
    $\phi_k(x) = (c/a)^{1/4} e^{-(c-a)x^2} \mathrm{He}_k(2\sqrt c\, x)/\sqrt{k!}$, orthonormal in
    ``L²(p)``. In ``dim`` dimensions the kernel and the measure factor over axes: eigenvalues are products,
    eigenfunctions products of the per-axis ones (degenerate for equal axes), ordered by decreasing
    eigenvalue (ties: lexicographic in the per-axis indices).
    """

    def __init__(
        self, dim: int = 1, gamma: float = 2.0, std: float | Sequence[float] = 1.0, mean: float = 0.0
    ):
        super().__init__(RBF(gamma), Gaussian(dim, std, mean))
        a = 1.0 / (4 * self.sampler.std**2)  # (d,)
        b = self.kernel.gamma
        c = torch.sqrt(a * a + 2 * a * b)
        big_a = a + b + c
        self._a, self._c, self._ratio = a, c, b / big_a  # each (d,)
        self._log_scale = 0.5 * torch.log(2 * a / big_a).sum()

    def _indices(self, num_modes: int) -> list[tuple[int, ...]]:
        return top_multi_indices((-torch.log(self._ratio)).tolist(), num_modes)

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        k = torch.tensor(self._indices(num_modes), dtype=torch.float64)  # (L, d)
        return torch.exp(self._log_scale + (k * torch.log(self._ratio)).sum(1))

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        idx = self._indices(num_modes)
        kmax = max(max(i) for i in idx)
        x = x.double() - self.sampler.mean.to(x.device)
        a, c = self._a.to(x.device), self._c.to(x.device)
        envelope = (c / a) ** 0.25 * torch.exp(-(c - a) * x * x)  # (n, d)
        per_axis = [
            envelope[:, i : i + 1] * normalized_hermite_e(2 * c[i].sqrt() * x[:, i], kmax)
            for i in range(self.dim)
        ]  # each (n, kmax + 1)
        return torch.stack(
            [torch.stack([per_axis[i][:, k] for i, k in enumerate(m)]).prod(0) for m in idx], 1
        )
