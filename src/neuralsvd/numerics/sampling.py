"""Samplers that know their density.

Every sampler draws ``x ~ p`` with ``sample(n, generator) -> (n, d)`` and evaluates
``log_prob(x) -> (n,)``. Importance-sampled operators (e.g. :class:`~neuralsvd.operators.Schrodinger`)
also need the first two derivatives of ``u = ½ log p``; :meth:`Sampler.half_log_density_derivatives`
computes them by autograd of :meth:`log_prob` (exact and numerically stable, e.g. for mixtures, whose
``log_prob`` is a log-sum-exp), and subclasses with closed forms override it.

Randomness comes only from the ``torch.Generator`` passed in; its device decides where samples live.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._validation import check_positive_int

__all__ = ["Gaussian", "Index", "Mixture", "RadialExponential", "Sampler", "TruncatedGaussian", "UniformBox"]


class Sampler:
    """Abstract sampling distribution ``p`` on ``R^d`` (or on indices, for :class:`Index`)."""

    dim: int

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Draw ``n`` points, ``(n, d)``, on ``generator.device`` (CPU if no generator)."""
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at ``x`` (n, d) -> (n,)."""
        raise NotImplementedError

    def half_log_density_derivatives(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``u = ½ log p`` with its gradient and Laplacian: ``(u (n,), ∇u (n, d), Δu (n,))``.

        The default differentiates :meth:`log_prob` twice with autograd (d backward passes, cheap: no
        network is involved). The result carries no graph.
        """
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            u = 0.5 * self.log_prob(xg)  # (n,)
            (grad,) = torch.autograd.grad(u.sum(), xg, create_graph=True)  # (n, d)
            lap = torch.zeros_like(u)
            for i in range(x.shape[1]):
                (g2,) = torch.autograd.grad(grad[:, i].sum(), xg, retain_graph=i + 1 < x.shape[1])
                lap = lap + g2[:, i]
        return u.detach(), grad.detach(), lap.detach()

    def is_population(self, n: int) -> bool:
        """Whether :meth:`sample` with ``n`` draws the whole (finite) support exactly once, so that batch
        averages are exact population moments. False for every continuous distribution."""
        return False

    def _device(self, generator: torch.Generator | None) -> torch.device:
        return generator.device if generator is not None else torch.device("cpu")


class Gaussian(Sampler):
    """Isotropic (or per-axis) Gaussian ``N(mean, diag(std²))`` on ``R^dim``."""

    def __init__(self, dim: int, std: float | Sequence[float] = 1.0, mean: float | Sequence[float] = 0.0):
        check_positive_int("dim", dim)
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
        if std_t.numel() not in (1, dim) or not bool((std_t > 0).all() & torch.isfinite(std_t).all()):
            raise ValueError(f"std must be a positive finite float or a sequence of {dim} of them, got {std!r}")
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        if mean_t.numel() not in (1, dim) or not bool(torch.isfinite(mean_t).all()):
            raise ValueError(f"mean must be a finite float or a sequence of {dim} of them, got {mean!r}")
        self.dim = dim
        self.std = std_t.expand(dim).clone()  # (d,)
        self.mean = mean_t.expand(dim).clone()  # (d,)

    def sample(self, n, generator=None, dtype=None):
        check_positive_int("n", n)
        dtype = dtype or torch.get_default_dtype()
        z = torch.randn(n, self.dim, generator=generator, device=self._device(generator), dtype=dtype)
        return self.mean.to(z) + z * self.std.to(z)

    def log_prob(self, x):
        std = self.std.to(x)
        z = (x - self.mean.to(x)) / std
        return -0.5 * (z**2).sum(-1) - torch.log(std).sum() - 0.5 * self.dim * math.log(2 * math.pi)

    def half_log_density_derivatives(self, x):
        var = (self.std**2).to(x)  # (d,)
        u = 0.5 * self.log_prob(x)
        grad = -(x - self.mean.to(x)) / (2 * var)
        lap = (-1.0 / (2 * var)).sum().expand(x.shape[0])
        return u, grad, lap


class RadialExponential(Sampler):
    """``p(x) ∝ exp(-|x| / scale)`` on ``R^dim``: exponential tails, heavier than any Gaussian's.

    Normalized, ``p(x) = exp(-r/a) / (a^d Γ(d) |S^{d-1}|)`` with ``|S^{d-1}| = 2 π^{d/2} / Γ(d/2)``; the
    radius is ``Gamma(d, a)``-distributed and the direction uniform. Matched to states that decay like
    ``e^{-κ r}`` (hydrogen: ``a = 1/(2κ)`` makes ``p ∝ ψ²`` in the tail). ``p`` has a kink at the origin,
    so ``½ log p`` has no Laplacian there (``Δu = -(d-1)/(2 a r)``): use it with operators that need the
    density's values only (``Schrodinger(model_output="psi")``).
    """

    def __init__(self, dim: int, scale: float = 1.0):
        check_positive_int("dim", dim)
        if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        self.dim, self.scale = dim, float(scale)
        log_sphere = math.log(2) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)
        self._log_norm = dim * math.log(self.scale) + math.lgamma(dim) + log_sphere

    def sample(self, n, generator=None, dtype=None):
        check_positive_int("n", n)
        dtype = dtype or torch.get_default_dtype()
        device = self._device(generator)
        # Gamma(d, a) radius as a sum of d exponentials; uniform direction from a normalized Gaussian
        u = torch.rand(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        r = -self.scale * torch.log1p(-u).sum(1, keepdim=True)  # (n, 1)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        return (r * z / z.norm(dim=1, keepdim=True)).to(dtype)

    def log_prob(self, x):
        return -x.norm(dim=-1) / self.scale - self._log_norm

    def half_log_density_derivatives(self, x):
        r = x.norm(dim=-1).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)  # (n,)
        u = 0.5 * self.log_prob(x)
        grad = -x / (2 * self.scale * r.unsqueeze(-1))
        lap = -(self.dim - 1) / (2 * self.scale * r)
        return u, grad, lap


class TruncatedGaussian(Gaussian):
    """Gaussian ``N(0, std² I)`` truncated to the box ``[-bound, bound]^dim`` (per axis)."""

    def __init__(self, dim: int, std: float, bound: float):
        super().__init__(dim, std)
        if not (isinstance(bound, (int, float)) and 0 < bound < math.inf):
            raise ValueError(f"bound must be a positive finite number, got {bound!r}")
        self.bound = float(bound)
        # log of the per-axis normalizer Φ(b/σ) - Φ(-b/σ)
        mass = torch.special.erf(self.bound / (self.std * math.sqrt(2)))  # (d,)
        self._log_mass = torch.log(mass).sum()

    def sample(self, n, generator=None, dtype=None):
        check_positive_int("n", n)
        dtype = dtype or torch.get_default_dtype()
        std = self.std.to(dtype=torch.float64)
        lo = torch.special.ndtr(torch.as_tensor(-self.bound, dtype=torch.float64) / std)  # (d,)
        u = torch.rand(n, self.dim, generator=generator, device=self._device(generator), dtype=torch.float64)
        q = lo.to(u.device) + u * (1 - 2 * lo.to(u.device))
        x = std.to(u.device) * torch.special.ndtri(q)
        return x.clamp(-self.bound, self.bound).to(dtype)

    def log_prob(self, x):
        inside = (x.abs() <= self.bound).all(-1)
        lp = super().log_prob(x) - self._log_mass.to(x)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))


class UniformBox(Sampler):
    """Uniform distribution on ``[center - bound, center + bound]^dim`` (default centred at 0)."""

    def __init__(self, dim: int, bound: float, center: float = 0.0):
        check_positive_int("dim", dim)
        if not (isinstance(bound, (int, float)) and 0 < bound < math.inf):
            raise ValueError(f"bound must be a positive finite number, got {bound!r}")
        if not (isinstance(center, (int, float)) and math.isfinite(center)):
            raise ValueError(f"center must be a finite number, got {center!r}")
        self.dim, self.bound, self.center = dim, float(bound), float(center)

    def sample(self, n, generator=None, dtype=None):
        check_positive_int("n", n)
        dtype = dtype or torch.get_default_dtype()
        u = torch.rand(n, self.dim, generator=generator, device=self._device(generator), dtype=dtype)
        return self.center + (2 * u - 1) * self.bound

    def log_prob(self, x):
        inside = ((x - self.center).abs() <= self.bound).all(-1)
        lp = torch.full(x.shape[:1], -self.dim * math.log(2 * self.bound), dtype=x.dtype, device=x.device)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def half_log_density_derivatives(self, x):
        u = 0.5 * self.log_prob(x)
        return u, torch.zeros_like(x), torch.zeros_like(u)


class Mixture(Sampler):
    """Mixture ``Σ_k π_k p_k`` of samplers on the same space (e.g. Gaussians of several scales).

    ``log_prob`` is a log-sum-exp, so ``½ log p`` and its derivatives stay finite in float32 far in the
    tails where each component density underflows.
    """

    def __init__(self, components: Sequence[Sampler], weights: Sequence[float] | None = None):
        if len(components) == 0:
            raise ValueError("Mixture needs at least one component")
        dims = {c.dim for c in components}
        if len(dims) != 1:
            raise ValueError(f"all mixture components must have the same dim, got {sorted(dims)}")
        w = torch.ones(len(components), dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(components),) or not bool((w > 0).all() & torch.isfinite(w).all()):
            raise ValueError(f"weights must be {len(components)} positive numbers, got {weights!r}")
        self.components, self.weights, self.dim = list(components), w / w.sum(), dims.pop()

    def sample(self, n, generator=None, dtype=None):
        check_positive_int("n", n)
        which = torch.multinomial(self.weights.to(self._device(generator)), n, replacement=True, generator=generator)
        xs = torch.stack([c.sample(n, generator, dtype) for c in self.components])  # (K, n, d)
        return xs[which, torch.arange(n, device=which.device)]

    def log_prob(self, x):
        lps = torch.stack([c.log_prob(x) for c in self.components], -1)  # (n, K)
        return torch.logsumexp(lps + torch.log(self.weights.to(x)), -1)


class Index(Sampler):
    """Uniform distribution over the indices ``0..num_points-1`` (the measure of a finite operator).

    Samples are int64 of shape ``(n,)``. With ``replacement=True`` they are i.i.d. (split-batch
    estimates are exactly unbiased). By default they are drawn without replacement, ``min(n, num_points)``
    of them: a batch at least as large as the population *is* the population (exact estimates), and
    smaller batches carry an O(1/num_points) bias in split-batch second moments.
    """

    dim = 1

    def __init__(self, num_points: int, replacement: bool = False):
        check_positive_int("num_points", num_points)
        self.num_points, self.replacement = num_points, bool(replacement)

    def sample(self, n, generator=None, dtype=None):
        check_positive_int("n", n)
        device = self._device(generator)
        if self.replacement:
            return torch.randint(self.num_points, (n,), generator=generator, device=device)
        return torch.randperm(self.num_points, generator=generator, device=device)[:n]

    def is_population(self, n: int) -> bool:
        """Without replacement, ``n >= num_points`` draws every index exactly once (in random order)."""
        return not self.replacement and n >= self.num_points

    def log_prob(self, x):
        return torch.full(x.shape[:1], -math.log(self.num_points), dtype=torch.get_default_dtype(), device=x.device)
