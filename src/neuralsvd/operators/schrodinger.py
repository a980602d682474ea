"""Schrödinger operators ``H = -kinetic Δ + V`` learned through ``T = scale * (shift - H)``.

Importance trick: with ``x ~ p`` the model represents ``f = ψ / sqrt(p)`` and

    (Tf)(x) = scale * (shift f + kinetic Δ(sqrt(p) f) / sqrt(p) - V f),
    Δ(sqrt(p) f) / sqrt(p) = Δf + 2 ∇u·∇f + (|∇u|² + Δu) f,   u = ½ log p,

which is self-adjoint in ``L²(p)`` with ``E_p[f_l f_m] = ∫ ψ_l ψ_m dx``. Alternatively
(``model_output="psi"``) the model represents ``ψ`` itself and the operator divides by ``sqrt(p)``:
``f = ψ / sqrt(p)``, ``Tf = (Tψ) / sqrt(p)`` with ``Tψ = scale * (shift ψ + kinetic Δψ - V ψ)``; the same
estimates (unbiased for any ``p``), but the function class no longer depends on the sampler, ``p`` needs
no derivatives (a density with a kink is fine), and a model with the physics' decay (an envelope) needs
not learn ``1 / sqrt(p)``. Learned ``T``-eigenvalues ``λ``
are reported as energies ``E = shift - λ / scale`` (ascending, ground state first); learned
eigenfunctions as ``ψ = sqrt(p) f`` in ``L²(dx)``. Pick ``shift`` above the highest energy wanted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._validation import check_positive_int
from ..numerics import quadrature as quad
from ..numerics.allowed_region import allowed_region_gaussian
from ..numerics.autodiff import (
    LAPLACIAN_METHODS,
    STOCHASTIC_METHODS,
    directional_derivative,
    value_and_derivatives,
)
from ..numerics.cusps import Charge, find_coulomb_charges, log_cusp_derivatives, proposal_near_charges
from ..numerics.sampling import Gaussian, Sampler
from .base import Function, Operator, check_model_output
from .multi_index import top_multi_indices

__all__ = ["HarmonicOscillator", "Hydrogen2D", "Schrodinger", "nucleus"]


class Schrodinger(Operator):
    """``H = -kinetic Δ + V(x)`` on ``R^dim``, learned as ``T = scale * (shift - H)``.

    Args:
        potential: callable ``x (n, dim) -> V(x) (n,)``.
        dim: spatial dimension ``d``.
        kinetic: coefficient of ``-Δ`` (the paper's convention: 1, no ½).
        scale, shift: the affine map to the learned operator; ``scale > 0``.
        sampler: sampling density ``p``. Default: a Gaussian over the classically allowed region
            ``{V < shift}``, where every state of energy below ``shift`` lives
            (:func:`~neuralsvd.numerics.allowed_region.allowed_region_gaussian`: centred on the region, 83%
            of its points inside it when the region is an ellipsoid); when that region is empty or unbounded
            (e.g. a Coulomb potential with ``shift ≥ 0``), ``N(0, I_d)`` with a warning.
        laplacian: ``"exact"`` (default; forward jets or nested jvp), ``"fd"`` (central differences with
            step ``fd_eps``) or an unbiased stochastic estimate with ``probes`` directions per point
            (``"hutchinson"``, ``"hutchinson-gaussian"``, ``"hutchinson-axes"``; see
            :mod:`neuralsvd.autodiff`): ``Tf`` is then unbiased, and so is the NestedLoRA gradient, which is
            linear in ``Tf``; the read-outs (Rayleigh quotients) stay unbiased too. With the ratio model
            the drift term ``∇u·∇f`` is computed exactly (one more jvp), so only ``Δf`` is estimated.
        model_output: ``"ratio"`` (default, the paper's importance trick: the model is ``ψ / sqrt(p)``) or
            ``"psi"`` (the model is ``ψ``; see the module docstring).
        cusps: ``"auto"`` (default: find the potential's attractive Coulomb charges, see
            :func:`~neuralsvd.numerics.cusps.find_coulomb_charges`), a sequence of
            :class:`~neuralsvd.numerics.cusps.Charge`, or ``None``. Each charge's cusp factor ``J``
            (Kato's cusp, constant far away) multiplies the model: the functions learned are ``J`` times the
            model's output (``ψ = sqrt(p) J model`` or ``J model``), so a smooth network represents the
            states' cusps and the charge's ``1/r`` cancels in ``Tf`` point by point. ``self.charges`` lists
            them (empty: no factor, the operator as without it). When ``sampler`` puts fewer than 10% of its
            points within a Bohr radius of a charge, training and read-out batches are drawn from
            ``self.proposal`` instead (half from ``sampler``, half near the charges,
            :func:`~neuralsvd.numerics.cusps.proposal_near_charges`) and weighted by ``sqrt(p/q)``: the
            estimates stay those of ``L²(p)``, without the heavy tails of a region the sampler hardly reaches.
    """

    MODEL_OUTPUTS = ("ratio", "psi")

    def __init__(self, potential: Callable[[Tensor], Tensor], dim: int, kinetic: float = 1.0, scale: float = 1.0,
                 shift: float = 0.0, sampler: Sampler | None = None, laplacian: str = "exact", fd_eps: float = 1e-2,
                 model_output: str = "ratio", probes: int = 1, cusps: str | Sequence[Charge] | None = "auto"):
        super().__init__()
        if not callable(potential):
            raise TypeError(f"potential must be a callable x (n, d) -> (n,), got {type(potential).__name__}")
        check_positive_int("dim", dim)
        for name, value in (("scale", scale), ("kinetic", kinetic), ("fd_eps", fd_eps)):
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not (isinstance(shift, (int, float)) and math.isfinite(shift)):
            raise ValueError(f"shift must be a finite number, got {shift!r}")
        if laplacian not in LAPLACIAN_METHODS:
            raise ValueError(f"unknown laplacian method {laplacian!r}; valid: {', '.join(map(repr, LAPLACIAN_METHODS))}")
        check_positive_int("probes", probes)
        if model_output not in self.MODEL_OUTPUTS:
            raise ValueError(f"unknown model_output {model_output!r}; valid: {', '.join(map(repr, self.MODEL_OUTPUTS))}")
        self.model_output = model_output
        self.sampler = sampler if sampler is not None else _default_sampler(potential, dim, float(shift))
        if self.sampler.dim != dim:
            raise ValueError(f"sampler has dim {self.sampler.dim}, operator has dim {dim}")
        self.potential, self.dim = potential, dim
        self.kinetic, self.scale, self.shift = float(kinetic), float(scale), float(shift)
        self.laplacian_method, self.fd_eps, self.probes = laplacian, float(fd_eps), probes
        if isinstance(cusps, str) and cusps != "auto":
            raise ValueError(f"cusps must be 'auto', a sequence of Charge or None, got {cusps!r}")
        if cusps is None or (dim < 2 and isinstance(cusps, str)):  # no Coulomb cusps on a line
            self.charges: list[Charge] = []
        elif isinstance(cusps, str):
            self.charges = find_coulomb_charges(potential, self.sampler)
        else:
            self.charges = list(cusps)
            if dim < 2 or not all(isinstance(c, Charge) and len(c.center) == dim and c.charge > 0 for c in self.charges):
                raise ValueError(f"cusps must be Charge(center of length {dim} ≥ 2, charge > 0) items, got {cusps!r}")
        # draws come from q (p itself when it reaches the charges); f and Tf carry sqrt(p/q): estimates stay L²(p)'s
        self.proposal = proposal_near_charges(self.sampler, self.charges, self.kinetic)

    @property
    def draws(self) -> Sampler:
        """The density ``q`` that :meth:`sample` draws from (``proposal`` or ``sampler``): :meth:`apply`'s values
        carry ``sqrt(p/q)``, so averages over draws of ``q`` (or a rule weighted by ``q``) are ``L²(p)`` moments."""
        return self.proposal or self.sampler

    def sample(self, n, generator=None, dtype=None):
        return self.draws.sample(n, generator, dtype)

    def validate(self, x: Tensor) -> None:
        v = self.potential(x)
        if not isinstance(v, Tensor) or v.shape != (x.shape[0],):
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"potential must map x of shape (n, {self.dim}) to (n,) = ({x.shape[0]},); got {shape}")
        bad = ~torch.isfinite(v)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"potential returned non-finite values at {int(bad.sum())} of {x.shape[0]} points, "
                f"e.g. V({x[i].tolist()}) = {v[i].item()}"
            )

    def _apply_operator(self, f: Function, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (n, {self.dim}), got {tuple(x.shape)}")
        fx, (value, grad, lap) = value_and_derivatives(f, x, self.laplacian_method, self.fd_eps, self.probes)
        check_model_output(fx, x.shape[0])  # fx (n, L) with graph; value (n, L), grad (n, d, L), lap (n, L)
        with torch.no_grad():
            v = self.potential(x).unsqueeze(-1)  # (n, 1)
            # ψ = exp(w) · model with w = ½ log p (ratio) and + log J (cusps): Δψ / e^w from the derivatives of w
            weight, dw, lap_w = None, None, None  # weight (n, 1) multiplies f and Tf
            if self.model_output == "psi":  # the model is ψ / J: divide f and Tψ by sqrt(p)
                half_log_p = 0.5 * self.sampler.log_prob(x)  # (n,)
                weight = torch.exp(-half_log_p).unsqueeze(-1)
            else:
                half_log_p, dw, lap_w = self.sampler.half_log_density_derivatives(x)  # (n,), (n, d), (n,)
                dw = dw.to(x)
            if self.charges:
                log_j, dj, lap_j = log_cusp_derivatives(x, self.charges, self.kinetic)
                dw, lap_w = (dj, lap_j) if dw is None else (dw + dj, lap_w + lap_j)
                # and the importance weight sqrt(p/q) of the draw (1 when q is p)
                log_w = log_j if self.proposal is None else log_j + half_log_p - 0.5 * self.proposal.log_prob(x)
                j = torch.exp(log_w).unsqueeze(-1)
                weight = j if weight is None else weight * j
            if dw is None:
                lap_psi = lap
            else:
                if self.laplacian_method in STOCHASTIC_METHODS:  # ∇w·∇f exactly (one jvp): only Δf is random
                    drift = directional_derivative(f, x, dw)  # (n, L)
                else:
                    drift = (dw.unsqueeze(-1) * grad).sum(1)
                lap_psi = lap + 2 * drift + ((dw * dw).sum(1) + lap_w).unsqueeze(-1) * value
            tfx = self.scale * ((self.shift - v) * value + self.kinetic * lap_psi)
        if weight is None:
            return fx, tfx
        return fx * weight, tfx * weight

    def eigenvalues_from_learned(self, eigenvalues: Tensor) -> Tensor:
        return self.shift - eigenvalues / self.scale

    def _quadrature_in_sampling_measure(self, max_points: int = 100_000) -> quad.Quadrature | None:
        """This operator's :meth:`quadrature` re-weighted for :meth:`apply`'s values (``w q(x)``, ``q`` the
        draws' density: ``L²(p)`` moments), if it has at most ``max_points`` points; presets with deterministic
        rules use it for read-outs."""
        q = self.quadrature()
        if len(q) > max_points:
            return None
        log_q = self.draws.log_prob(q.points)
        # drop points never drawn (q < e^-150): there 1/sqrt(q) overflows float32 and the model was never
        # trained; their weight w q underflows anyway
        keep = log_q > -150.0
        return quad.Quadrature(q.points[keep], q.weights[keep] * torch.exp(log_q[keep]))

    def eigenfunctions_from_model(self, fx: Tensor, x: Tensor) -> Tensor:
        log_w = torch.zeros(x.shape[0], dtype=fx.dtype, device=fx.device)  # (n,)
        if self.model_output == "ratio":
            log_w = log_w + 0.5 * self.sampler.log_prob(x).to(log_w)
        if self.charges:
            log_w = log_w + log_cusp_derivatives(x, self.charges, self.kinetic)[0].to(log_w)
        return torch.exp(log_w).unsqueeze(-1) * fx

    def quadrature(self) -> quad.Quadrature:
        """Default: importance-sampled Monte Carlo with 2¹⁸ points (error ~2e-3); presets do better."""
        return quad.monte_carlo(self.sampler, 2**18)


# --- 2D hydrogen ------------------------------------------------------------------------------------

def _default_sampler(potential: Callable[[Tensor], Tensor], dim: int, shift: float) -> Sampler:
    """``Schrodinger``'s default ``sampler`` (its docstring)."""
    sampler = allowed_region_gaussian(potential, dim, shift)
    if sampler is not None:
        return sampler
    warnings.warn(f"Schrodinger: the region where V < shift = {shift:g} is empty or unbounded, so the default "
                  "sampler is N(0, I), blind to the potential's scale; pass a sampler that covers the wanted "
                  "states (e.g. sampling.Gaussian(dim, std))", UserWarning, stacklevel=3)
    return Gaussian(dim, 1.0)


def nucleus(dim: int, charge: float, cusps: str | None) -> list[Charge] | None:
    """A hydrogen class's ``cusps``: ``"auto"`` is its nucleus (known, so not searched for); None is none."""
    if cusps is None:
        return None
    if cusps != "auto":
        raise ValueError(f"cusps must be 'auto' or None, got {cusps!r}")
    return [Charge((0.0,) * dim, charge)]


def _hydrogen_states(num_modes: int) -> list[tuple[int, int]]:
    """(n, l) in mode order: shells n = 0, 1, ..., and l = -n..n inside a shell."""
    states, n = [], 0
    while len(states) < num_modes:
        states.extend((n, l) for l in range(-n, n + 1))
        n += 1
    return states[:num_modes]


def _hyp1f1_terminating(a: int, b: int, z: Tensor) -> Tensor:
    """``₁F₁(a; b; z)`` for a non-positive integer ``a`` (a polynomial of degree ``-a``)."""
    term, total = torch.ones_like(z), torch.ones_like(z)
    for k in range(-a):
        term = term * (a + k) / ((b + k) * (k + 1)) * z
        total = total + term
    return total


class Hydrogen2D(Schrodinger):
    """2D hydrogen atom ``H = -Δ - Z/|x|`` (the paper's convention).

    Energies ``E_n = -Z² / (2n + 1)²``, degeneracy ``2n + 1`` (``l = -n..n``); eigenfunctions from Yang
    et al., Phys. Rev. A 43, 1186 (1991). Defaults follow the paper: ``T = 100 (0 - H)``,
    samples from ``N(0, 16² I)``. ``cusps="auto"`` (default): the cusp factor of the nucleus (see
    :class:`Schrodinger`; the presets, whose model has ``|x|`` as an input, use None).
    """

    def __init__(self, charge: float = 1.0, scale: float = 100.0, shift: float = 0.0, sampler: Sampler | None = None,
                 laplacian: str = "exact", fd_eps: float = 1e-2, model_output: str = "ratio", cusps: str | None = "auto"):
        if not charge > 0:
            raise ValueError(f"charge must be positive, got {charge!r}")
        self.charge = float(charge)
        super().__init__(self._coulomb, 2, 1.0, scale, shift, sampler or Gaussian(2, 16.0), laplacian, fd_eps,
                         model_output, cusps=nucleus(2, self.charge, cusps))

    def _coulomb(self, x: Tensor) -> Tensor:
        return -self.charge / x.norm(dim=-1)

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        n = torch.tensor([s[0] for s in _hydrogen_states(num_modes)], dtype=torch.float64)
        return -self.charge**2 / (2 * n + 1) ** 2

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        r, theta = x.norm(dim=-1), torch.atan2(x[:, 1], x[:, 0])
        cols = []
        for n, l in _hydrogen_states(num_modes):
            m = abs(l)
            beta = 2 * self.charge / (2 * n + 1)
            norm = math.sqrt(math.factorial(n + m) / ((2 * n + 1) * math.factorial(n - m))) / math.factorial(2 * m)
            radial = beta * (beta * r) ** m * torch.exp(-beta * r / 2) * _hyp1f1_terminating(m - n, 2 * m + 1, beta * r) * norm
            if l > 0:
                angular = torch.cos(l * theta) / math.sqrt(math.pi)
            elif l < 0:
                angular = torch.sin(m * theta) / math.sqrt(math.pi)
            else:
                angular = torch.full_like(theta, 1 / math.sqrt(2 * math.pi))
            cols.append(radial * angular)
        return torch.stack(cols, 1)

    def evaluation_quadrature(self) -> quad.Quadrature | None:
        """The polar rule: Monte Carlo read-outs of ``⟨f, Tf⟩`` have heavy tails here (the Coulomb
        ``1/r`` is cancelled only by an exact cusp), a quadrature has none."""
        return self._quadrature_in_sampling_measure()

    def quadrature(self) -> quad.Quadrature:
        """Polar rule to r = 400/Z with panels refined at the nucleus (integration error < 1e-10 for n ≤ 3)."""
        edges = [e / self.charge for e in (0, 0.25, 1, 3, 7, 15, 30, 55, 90, 140, 200, 280, 400)]
        return quad.polar(edges, radial_nodes=20, angles=64)


# --- harmonic oscillator ------------------------------------------------------------------------------

def _hermite_functions(x: Tensor, omega: float, kmax: int) -> Tensor:
    """Normalized 1D eigenfunctions of ``-d²/dx² + ω² x²`` for k = 0..kmax at ``x`` (n,): ``(n, kmax+1)``."""
    xi = math.sqrt(omega) * x
    h = [(omega / math.pi) ** 0.25 * torch.exp(-0.5 * xi * xi)]
    if kmax >= 1:
        h.append(math.sqrt(2.0) * xi * h[0])
    for k in range(1, kmax):
        h.append(math.sqrt(2.0 / (k + 1)) * xi * h[k] - math.sqrt(k / (k + 1)) * h[k - 1])
    return torch.stack(h, 1)


class HarmonicOscillator(Schrodinger):
    """``H = -Δ + Σ_i ω_i² x_i²`` on ``R^dim`` (isotropic or anisotropic).

    Energies ``E = Σ_i ω_i (2 n_i + 1)``; eigenfunctions are products of Hermite functions. Defaults:
    ``shift = 4 Σω + 8 max ω`` (16 for the 2D isotropic case, the authors' choice), samples from
    ``N(0, (4/sqrt(min ω))² I)``. ``omega``: one frequency, or one per axis (``dim`` of them).
    """

    def __init__(self, dim: int = 2, omega: float | Sequence[float] = 1.0, scale: float = 1.0,
                 shift: float | None = None, sampler: Sampler | None = None, laplacian: str = "exact",
                 fd_eps: float = 1e-2, model_output: str = "ratio", probes: int = 1):
        check_positive_int("dim", dim)
        om = [float(omega)] * dim if isinstance(omega, (int, float)) else [float(o) for o in omega]
        if len(om) != dim or not all(w > 0 and math.isfinite(w) for w in om):
            raise ValueError(f"omega must be a positive float or {dim} positive floats (one per axis for dim={dim}), "
                             f"got {omega!r}")
        self.omega = om
        shift = 4 * sum(om) + 8 * max(om) if shift is None else shift
        sampler = sampler or Gaussian(dim, 4.0 / math.sqrt(min(om)))
        super().__init__(self._quadratic, dim, 1.0, scale, shift, sampler, laplacian, fd_eps, model_output, probes)
        self.register_buffer("_omega2", torch.tensor(om, dtype=torch.float64) ** 2, persistent=False)

    def _quadratic(self, x: Tensor) -> Tensor:
        return (x * x * self._omega2.to(x)).sum(-1)

    def quantum_numbers(self, num_modes: int) -> list[tuple[int, ...]]:
        """The ``num_modes`` lowest multi-indices ``(n_1..n_d)`` by energy (ties: lexicographic)."""
        return top_multi_indices([2 * w for w in self.omega], num_modes)

    def _energy(self, idx: tuple[int, ...]) -> float:
        return sum(w * (2 * k + 1) for w, k in zip(self.omega, idx))

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        return torch.tensor([self._energy(i) for i in self.quantum_numbers(num_modes)], dtype=torch.float64)

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        idx = self.quantum_numbers(num_modes)
        kmax = max(max(i) for i in idx)
        per_axis = [_hermite_functions(x[:, a], self.omega[a], kmax) for a in range(self.dim)]  # each (n, kmax+1)
        cols = [torch.stack([per_axis[a][:, k] for a, k in enumerate(i)], 0).prod(0) for i in idx]
        return torch.stack(cols, 1)

    def evaluation_quadrature(self) -> quad.Quadrature | None:
        """The tensor Gauss–Legendre rule when it has at most 10⁵ points (d ≤ 2), else None (Monte Carlo)."""
        return self._quadrature_in_sampling_measure() if self.dim <= 3 else None

    #: points of the randomized quasi-Monte Carlo rule for d > 3
    QMC_POINTS = 2**16

    def quadrature(self) -> quad.Quadrature:
        """Tensor Gauss–Legendre on a box holding the states below ``shift`` (d ≤ 3), else randomized QMC.

        d ≤ 3: axis ``i`` spans ``±sqrt(2 (shift/ω_i + 30) / ω_i)``, beyond which those states are below
        e⁻³⁰. d > 3 (a tensor rule would need ~10⁵ᵈ/³ points): :func:`~neuralsvd.quadrature.gaussian_qmc`
        with :attr:`QMC_POINTS` scrambled Sobol points from ``q = |ψ_0|²`` (``N(0, diag(1/(2ω_i)))``), under
        which every ``ψ_l ψ_m / q`` is a polynomial. Error on the exact states, ``max |⟨ψ_l, ψ_m⟩ - δ_lm|``
        (``quadrature_error`` in :func:`neuralsvd.evaluate`, which also corrects the metrics for it): ~2e-4
        for the ground state and first shell in d = 10, ~1e-3 in d = 32 (docs/dimension-study.md). Learned
        functions need tails decaying faster than ``e^{-ω_i x_i²/4}`` for a finite variance.
        """
        if self.dim > 3:
            return quad.gaussian_qmc([1 / math.sqrt(2 * w) for w in self.omega], self.QMC_POINTS)
        bounds = [math.sqrt(2 * (self.shift / w + 30) / w) for w in self.omega]
        panels, nodes = {1: (16, 24), 2: (12, 16), 3: (8, 12)}[self.dim]
        return quad.box(bounds, panels, nodes)
