"""Coulomb singularities of a potential and the cusp factors that cancel them.

Near a point charge, ``V ≈ -Z / |x - c|``, every eigenfunction of ``H = -k Δ + V`` on ``R^d`` (d ≥ 2) has a
cusp (Kato's condition): ``ψ ≈ ψ(c) (1 - a |x - c|)`` with ``a = Z / (k (d - 1))``. A smooth network cannot
form it; the local energy ``Hψ / ψ`` of a smooth function keeps the ``1/r`` term, which makes Monte Carlo
estimates heavy-tailed and the learned states wrong near the charge. A factor

    J(x) = Π_c exp(-a_c r_c / (1 + a_c r_c)),   r_c = |x - c|,

has exactly that cusp at each charge and tends to a constant far away (``e^{-1}``), so ``ψ = J g`` with a
smooth ``g``: ``-k Δ log J`` contains ``+Z_c / r_c``, which cancels the charge's ``-Z_c / r_c`` point by
point. :func:`find_coulomb_charges` finds the charges of a black-box potential; :func:`log_cusp_derivatives`
gives ``log J`` with its gradient and Laplacian; :func:`proposal_near_charges` a sampling density that puts
half of the points within a few Bohr radii ``1/a`` of the charges, for samplers that hardly reach them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_positive_int
from .sampling import Mixture, Sampler

__all__ = ["NEAR_FRACTION", "Charge", "ChargeProposal", "find_coulomb_charges", "log_cusp_derivatives",
           "proposal_near_charges"]

#: radii (relative to the sampler's scale) at which ``-r V(c + r u)`` must agree to call ``c`` a charge
_PROBE_RADII = (1e-4, 1e-5)
_PROBE_DIRECTIONS = 6
_AGREEMENT = 1e-2
#: a sampler reaches a charge when at least this fraction of its draws lies within the charge's Bohr radius
NEAR_FRACTION = 0.1


@dataclass(frozen=True)
class Charge:
    """An attractive point charge of the potential: ``V ≈ -charge / |x - center|`` near ``center``."""

    center: tuple[float, ...]
    charge: float


def find_coulomb_charges(potential: Callable[[Tensor], Tensor], sampler: Sampler, points: int = 4096,
                         starts: int = 8, seed: int = 0) -> list[Charge]:
    """The attractive Coulomb singularities of ``potential`` within reach of ``sampler``.

    From the ``starts`` lowest and the ``starts`` steepest of ``points`` sampler draws, a Newton iteration
    for the centre of a Coulomb term (exact in one step for ``V = -Z/|x - c|``, quadratic with a smooth part
    added) walks to a candidate ``c``; ``c`` is a charge when ``-r V(c + r u)`` takes the same positive
    value (within 1%) at radii ``10⁻⁴`` and ``10⁻⁵`` (times the sampler's scale) in several directions
    ``u`` (for a finite potential it falls tenfold between them); ``Z`` is that value extrapolated to
    ``r = 0``. Float64 throughout; a potential that fails in float64 or without autograd has no charges
    found (never an error). Deterministic (its own generator).
    """
    generator = torch.Generator().manual_seed(seed)
    try:
        x = sampler.sample(points, generator, torch.float64).requires_grad_(True)  # (n, d)
        v = potential(x)  # (n,)
        if x.ndim != 2 or x.shape[1] < 2 or not isinstance(v, Tensor) or v.shape != (x.shape[0],):
            return []
        (slope,) = torch.autograd.grad(v.sum(), x)
        x, v, slope = x.detach(), torch.nan_to_num(v.detach(), nan=float("inf")), slope.norm(dim=1).nan_to_num(0.0)
        scale = float(x.std(0).mean())
        found: list[Charge] = []
        # a charge makes V low and steep near it: start from the lowest and from the steepest draws
        for i in dict.fromkeys(torch.argsort(v)[:starts].tolist() + torch.argsort(-slope)[:starts].tolist()):
            center = _newton(potential, x[i].clone(), scale)
            if center is None or any(torch.dist(center, torch.tensor(c.center, dtype=torch.float64)) < 1e-6 * scale
                                     for c in found):
                continue
            charge = _charge_at(potential, center, scale, generator)
            if charge is not None:
                found.append(Charge(tuple(center.tolist()), charge))
        return found
    except Exception:  # noqa: BLE001 -- a potential we cannot probe simply gets no cusp factor
        return []


def _newton(potential: Callable[[Tensor], Tensor], y: Tensor, scale: float, iterations: int = 60) -> Tensor | None:
    """Newton's iteration for the centre of ``V ≈ -Z / r + smooth``: along ``u = ∇V / |∇V|``, ``V' = Z / r²`` and
    ``V'' = -2Z / r³``, so ``c = y - r u`` with ``r = -2 V' / V''`` (independent of ``Z`` and of any offset).
    The next point sits at a quarter of that distance from ``c`` (never on the singularity itself)."""
    previous = None
    for _ in range(iterations):
        yg = y.detach().unsqueeze(0).requires_grad_(True)
        (grad,) = torch.autograd.grad(potential(yg).sum(), yg, create_graph=True)
        slope = grad.norm()
        if not (torch.isfinite(slope) and slope > 0):
            return None
        u = (grad / slope).detach()
        (hu,) = torch.autograd.grad((grad * u).sum(), yg)
        curvature = float((hu * u).sum())
        if not (math.isfinite(curvature) and curvature < 0):
            return None
        r = -2 * float(slope.detach()) / curvature
        center = y.detach() - r * u[0]
        if previous is not None and float((center - previous).norm()) < 1e-10 * scale:
            return center
        previous, y = center, center + 0.25 * r * u[0]
    return None


def _charge_at(potential: Callable[[Tensor], Tensor], center: Tensor, scale: float,
               generator: torch.Generator) -> float | None:
    u = torch.randn(_PROBE_DIRECTIONS, center.numel(), generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    estimates = []
    with torch.no_grad():
        for r in _PROBE_RADII:
            estimates.append(-r * scale * potential(center + r * scale * u))  # (directions,)
    z = torch.cat(estimates)
    if not bool(torch.isfinite(z).all()) or float(z.min()) <= 0:
        return None
    if float((z - z.mean()).abs().max()) > _AGREEMENT * float(z.mean()):
        return None
    # -r V = Z - r V_smooth(c) + O(r²): extrapolate the two radii's means to r = 0
    (r1, r2), (z1, z2) = _PROBE_RADII, (float(e.mean()) for e in estimates)
    return z2 - r2 * (z1 - z2) / (r1 - r2)


def log_cusp_derivatives(x: Tensor, charges: Sequence[Charge], kinetic: float) -> tuple[Tensor, Tensor, Tensor]:
    """``log J`` with its gradient and Laplacian at ``x`` (n, d): ``((n,), (n, d), (n,))``, no graph.

    With ``g(r) = -a r / (1 + a r)``: ``g' = -a / (1 + a r)²``, ``g'' = 2a² / (1 + a r)³``, and
    ``Δ g(r) = g'' + (d - 1) g' / r``, whose ``-a (d - 1) / r`` times ``-k`` is the charge's ``+Z / r``.
    """
    n, d = x.shape
    log_j, grad, lap = x.new_zeros(n), x.new_zeros(n, d), x.new_zeros(n)
    for c in charges:
        a = 1 / _radius(c, kinetic, d)
        diff = x - torch.tensor(c.center, dtype=x.dtype, device=x.device)  # (n, d)
        r = diff.norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)  # (n,)
        q = 1 + a * r
        g1 = -a / q**2
        log_j = log_j - a * r / q
        grad = grad + (g1 / r).unsqueeze(1) * diff
        lap = lap + 2 * a * a / q**3 + (d - 1) * g1 / r
    return log_j, grad, lap


def _radius(charge: Charge, kinetic: float, dim: int) -> float:
    """The state's length scale at the charge, ``1/a`` (the ground state there is ``∝ e^{-a r}``)."""
    return kinetic * (dim - 1) / charge.charge


class ChargeProposal(Sampler):
    """Equal mixture of isotropic Gaussians ``N(c, (1/a_c)² I)`` at the charges (``1/a_c`` their Bohr radius)."""

    def __init__(self, charges: Sequence[Charge], kinetic: float):
        if not charges:
            raise ValueError("ChargeProposal needs at least one charge")
        self.dim = len(charges[0].center)
        self.centers = torch.tensor([c.center for c in charges], dtype=torch.float64)  # (K, d)
        self.stds = torch.tensor([_radius(c, kinetic, self.dim) for c in charges], dtype=torch.float64)  # (K,)

    def sample(self, n, generator=None, dtype=None):
        check_positive_int("n", n)
        dtype = dtype or torch.get_default_dtype()
        device = self._device(generator)
        which = torch.randint(len(self.stds), (n,), generator=generator, device=device)  # i.i.d. per point
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        return self.centers.to(z)[which] + z * self.stds.to(z)[which].unsqueeze(1)

    def log_prob(self, x):
        z2 = ((x.unsqueeze(1) - self.centers.to(x)) ** 2).sum(-1) / self.stds.to(x) ** 2  # (n, K)
        log_k = -0.5 * z2 - self.dim * torch.log(self.stds.to(x)) - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logsumexp(log_k, -1) - math.log(len(self.stds))


def proposal_near_charges(sampler: Sampler, charges: Sequence[Charge], kinetic: float, points: int = 4096,
                          seed: int = 0) -> Mixture | None:
    """``q = ½ p + ½ ChargeProposal`` when ``p`` puts fewer than :data:`NEAR_FRACTION` of its draws within one
    Bohr radius ``1/a`` of some charge (where the ground state there has 32% (3D) to 59% (2D) of its
    weight), else None (``p`` is fine as it is). ``q ≥ p/2`` everywhere: importance weights ``p/q ≤ 2``."""
    if not charges:
        return None
    x = sampler.sample(points, torch.Generator().manual_seed(seed), torch.float64)  # (n, d)
    dim = x.shape[1]
    for c in charges:
        near = (x - torch.tensor(c.center, dtype=torch.float64)).norm(dim=1) < _radius(c, kinetic, dim)
        if float(near.double().mean()) < NEAR_FRACTION:
            return Mixture([sampler, ChargeProposal(charges, kinetic)])
    return None
