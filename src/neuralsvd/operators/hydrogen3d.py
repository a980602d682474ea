r"""The 3D hydrogen atom ``H = -kinetic Δ - Z / |x|``, by default in atomic units (``kinetic = ½``).

Energies ``E_n = -Z² / (4 kinetic n²)`` (atomic units: ``-Z² / (2 n²)``), ``n = 1, 2, ...``, degeneracy
``n²``. Real eigenfunctions ``ψ_nlm = R_nl(r) Y_lm(x / r)`` with ``0 ≤ l < n``, ``-l ≤ m ≤ l``:

    R_nl(r) = sqrt((2 / (n a))³ (n - l - 1)! / (2 n (n + l)!)) e^{-ρ/2} ρ^l L_{n-l-1}^{(2l+1)}(ρ),
    ρ = 2 r / (n a),  Bohr radius a = 2 kinetic / Z,

``L`` the generalized Laguerre polynomial and ``Y_lm`` the real spherical harmonics (``cos mφ`` for
``m > 0``, ``sin |m|φ`` for ``m < 0``), computed in Cartesian form (``ρ^l Y_lm`` is a polynomial), so
the functions are smooth everywhere except the nucleus's cusp and can be differentiated by autodiff.

Note the 2D :class:`~neuralsvd.operators.Hydrogen2D` keeps the NeuralSVD paper's convention
``kinetic = 1``; ``Hydrogen3D(kinetic=1.0)`` is its 3D counterpart (``E_n = -Z² / (4 n²)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..numerics import quadrature as quad
from ..numerics.sampling import RadialExponential, Sampler
from .schrodinger import Schrodinger, nucleus

__all__ = ["Hydrogen3D", "hydrogen_states"]


def hydrogen_states(num_modes: int) -> list[tuple[int, int, int]]:
    """``(n, l, m)`` in mode order: shells ``n = 1, 2, ...``, inside a shell ``l = 0..n-1``, ``m = -l..l``."""
    states, n = [], 1
    while len(states) < num_modes:
        states.extend((n, l, m) for l in range(n) for m in range(-l, l + 1))
        n += 1
    return states[:num_modes]


def _laguerre(k: int, alpha: int, z: Tensor) -> Tensor:
    """Generalized Laguerre polynomial ``L_k^{(α)}(z)`` by the three-term recurrence."""
    prev, cur = torch.zeros_like(z), torch.ones_like(z)
    for j in range(k):
        prev, cur = cur, ((2 * j + 1 + alpha - z) * cur - (j + alpha) * prev) / (j + 1)
    return cur


def _real_solid_harmonic(l: int, m: int, x: Tensor) -> Tensor:
    """``r^l Y_lm(x / r)`` at ``x (n, 3)``: a homogeneous polynomial of degree ``l`` (orthonormal ``Y_lm``)."""
    px, py, pz = x[:, 0], x[:, 1], x[:, 2]
    r2 = (x * x).sum(1)
    a = abs(m)
    # Re/Im of (x + iy)^|m| = r^|m| sin^|m|θ (cos, sin)(|m| φ)
    re, im = torch.ones_like(px), torch.zeros_like(px)
    for _ in range(a):
        re, im = re * px - im * py, re * py + im * px
    # r^(l-|m|) Q_l^|m|(cos θ) with P_l^m = sin^m θ Q_l^m, by the recurrence in l (no Condon-Shortley sign)
    q_prev, q = torch.zeros_like(px), torch.full_like(px, float(math.prod(range(1, 2 * a, 2))))
    for j in range(a + 1, l + 1):
        q_prev, q = q, ((2 * j - 1) * pz * q - (j + a - 1) * r2 * q_prev) / (j - a)
    norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a))
    if m == 0:
        return norm * q
    return math.sqrt(2) * norm * q * (re if m > 0 else im)


class Hydrogen3D(Schrodinger):
    """3D hydrogen ``H = -kinetic Δ - Z/|x|`` (default atomic units), learned as ``T = scale (shift - H)``.

    Defaults: ``T = 100 (0 - H)``, samples from the radial exponential ``∝ e^{-r / 2}``, the model is
    ``ψ / sqrt(p)`` (``model_output="ratio"``); the presets use ``model_output="psi"`` with a mixture
    sampler (see :mod:`neuralsvd.problems.higher_dim_presets`) and no cusp factor (their model has ``|x|`` as an
    input). ``cusps="auto"`` (default): the cusp factor of the nucleus (see :class:`Schrodinger`); None: none.
    """

    def __init__(self, charge: float = 1.0, kinetic: float = 0.5, scale: float = 100.0, shift: float = 0.0,
                 sampler: Sampler | None = None, laplacian: str = "exact", fd_eps: float = 1e-2,
                 model_output: str = "ratio", cusps: str | None = "auto"):
        if not (isinstance(charge, (int, float)) and charge > 0 and math.isfinite(charge)):
            raise ValueError(f"charge must be a positive finite number, got {charge!r}")
        self.charge = float(charge)
        super().__init__(self._coulomb, 3, kinetic, scale, shift, sampler or RadialExponential(3, 2.0), laplacian,
                         fd_eps, model_output, cusps=nucleus(3, self.charge, cusps))

    @property
    def bohr_radius(self) -> float:
        """``a = 2 kinetic / Z`` (1/Z in atomic units): ``ψ_n1..`` decays like ``e^{-r / (n a)}``."""
        return 2 * self.kinetic / self.charge

    def _coulomb(self, x: Tensor) -> Tensor:
        return -self.charge / x.norm(dim=-1)

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        n = torch.tensor([s[0] for s in hydrogen_states(num_modes)], dtype=torch.float64)
        return -self.charge**2 / (4 * self.kinetic * n**2)

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"expected x of shape (n, 3), got {tuple(x.shape)}")
        r = x.norm(dim=-1)
        a = self.bohr_radius
        cols = []
        for n, l, m in hydrogen_states(num_modes):
            k = 2 / (n * a)  # ρ = k r
            norm = math.sqrt(k**3 * math.factorial(n - l - 1) / (2 * n * math.factorial(n + l)))
            # R_nl Y_lm = norm e^{-ρ/2} L(ρ) k^l (r^l Y_lm)
            cols.append(norm * k**l * torch.exp(-0.5 * k * r) * _laguerre(n - l - 1, 2 * l + 1, k * r)
                        * _real_solid_harmonic(l, m, x))
        return torch.stack(cols, 1)

    def quadrature(self) -> quad.Quadrature:
        """Spherical product rule to ``r = 120 a`` with panels refined at the nucleus
        (orthonormality of the exact ``n ≤ 3`` states to ~1e-12)."""
        edges = [e * self.bohr_radius for e in (0, 0.25, 1, 2.5, 5, 9, 15, 24, 36, 52, 75, 120)]
        return quad.spherical(edges, radial_nodes=16, polar_nodes=12, azimuths=24)

    def evaluation_quadrature(self) -> quad.Quadrature | None:
        """The spherical rule in ``L²(p)`` (as :class:`~neuralsvd.operators.Hydrogen2D`: Monte Carlo
        read-outs of the Coulomb term have heavy tails)."""
        return self._quadrature_in_sampling_measure()
