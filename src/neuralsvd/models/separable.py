r"""A separable model: sums of products of one-dimensional networks,

    f_l(x) = Σ_{r < R} Π_{i < d} g(x_i) h_{l r i}(x_i),

with ``h_{l r i}: R -> R`` small MLPs (``L R d`` of them, run as one batched module) and ``g`` an optional
boundary factor per axis (the box factor of :class:`~neuralsvd.models.ParallelMLP`). ``R`` (the *rank*)
is the number of product terms; eigenfunctions of separable operators (sums of one-axis operators, e.g. the
Laplacian on a box or an anisotropic oscillator) are rank-one products, and so is one basis of each of
their degenerate eigenspaces.

The exact Laplacian is cheap: each factor carries only its value and first two derivatives in its one
variable (3 channels instead of ``d + 2``), and
``Δ Π_i v_i = Σ_i v_i'' Π_{j ≠ i} v_j`` (products over ``j ≠ i`` from prefix and suffix products, no
division). The cost per point is ``O(L R d)`` one-dimensional networks, linear in ``d``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .box import box_bounds, box_factor
from .networks import ACTIVATIONS

__all__ = ["SeparableMLP"]


def _exclusive_products(v: Tensor) -> Tensor:
    """``Π_{j ≠ i} v_j`` along the second-to-last axis ``i`` of ``v (..., d, n)``, without division."""
    ones = torch.ones_like(v[..., :1, :])
    prefix = torch.cat([ones, v[..., :-1, :]], -2).cumprod(-2)  # Π_{j < i}
    suffix = torch.cat([v[..., 1:, :], ones], -2).flip(-2).cumprod(-2).flip(-2)  # Π_{j > i}
    return prefix * suffix


class SeparableMLP(nn.Module):
    """``num_modes`` functions ``R^d -> R``, each a sum of ``rank`` products of 1D MLPs (module docstring).

    Args:
        in_features: input dimension ``d``.
        num_modes: number of output functions ``L``.
        rank: product terms per function ``R``.
        hidden: hidden widths of every 1D network.
        activation: one of :data:`~neuralsvd.models.ACTIVATIONS`.
        box: a boundary factor per axis, zero on the faces of the box: a half-width ``D`` or a pair
            ``(low, high)`` (as :class:`~neuralsvd.models.ParallelMLP`), or ``None``.

    Each 1D network starts near the constant 1 (output bias 1, small output weights), so every function
    starts as the box factor alone: products of ``d`` random factors would start at a scale ``~c^d``.
    """

    def __init__(self, in_features: int, num_modes: int, rank: int = 1, hidden: Sequence[int] = (32, 32),
                 activation: str = "tanh", box: float | Sequence[float] | None = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("num_modes", num_modes), ("rank", rank)):
            check_positive_int(name, value)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        hidden = tuple(int(h) for h in hidden)
        if len(hidden) == 0 or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
        low, high = box_bounds(box)
        self.in_features, self.num_modes, self.rank, self.activation = in_features, num_modes, rank, activation
        self.box = None if box is None else 0.5 * (high - low)
        self.box_center = 0.5 * (high + low)
        groups = num_modes * rank * in_features  # network (l, r, i) at index (l R + r) d + i
        self.first_weight = nn.Parameter(torch.randn(groups, 1, hidden[0]) * math.sqrt(2.0))
        self.first_bias = nn.Parameter(torch.randn(groups, 1, hidden[0]) * 0.5)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(groups, a, b) * math.sqrt(2.0 / a)) for a, b in itertools.pairwise(hidden))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(groups, 1, b)) for b in hidden[1:])
        self.out_weight = nn.Parameter(torch.randn(groups, hidden[-1], 1) * (1.0 / math.sqrt(hidden[-1])))
        self.out_bias = nn.Parameter(torch.ones(groups, 1, 1))

    @torch.no_grad()
    def reset_mode(self, mode: int, generator: torch.Generator) -> None:
        """Draw the ``rank × d`` networks of output ``mode`` afresh, as at construction (to revive a
        collapsed mode, :mod:`neuralsvd.training.revival`)."""
        block = slice(mode * self.rank * self.in_features, (mode + 1) * self.rank * self.in_features)

        def draw(t: Tensor, scale: float) -> Tensor:
            shape = tuple(t[block].shape)
            return torch.randn(shape, generator=generator, device=t.device).to(t.dtype) * scale

        self.first_weight[block] = draw(self.first_weight, math.sqrt(2.0))
        self.first_bias[block] = draw(self.first_bias, 0.5)
        for w in self.weights:
            w[block] = draw(w, math.sqrt(2.0 / w.shape[1]))
        for b in self.biases:
            b[block] = 0
        self.out_weight[block] = draw(self.out_weight, 1.0 / math.sqrt(self.out_weight.shape[1]))
        self.out_bias[block] = 1

    def forward(self, x: Tensor) -> Tensor:
        return self.value_and_jet(x, derivatives=False)[0]

    def value_and_jet(self, x: Tensor, derivatives: bool = True) -> tuple[Tensor, Tensor | None]:
        """Outputs ``(n, L)`` with graph and, if ``derivatives``, the jet ``(d + 2, n, L)`` (value, ``∂/∂x_i``,
        Laplacian) without one."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected x of shape (n, {self.in_features}), got {tuple(x.shape)}")
        n, d, L, R = x.shape[0], self.in_features, self.num_modes, self.rank
        t = x.T.repeat(L * R, 1).unsqueeze(-1)  # (G, n, 1): network g reads x_{g mod d}
        value, d1, d2 = self._factors(t, derivatives)  # (G, n) each (d1, d2 None without derivatives)
        v = value.view(L, R, d, n)
        out = v.prod(2).sum(1).T  # (n, L)
        if not derivatives:
            return out, None
        with torch.no_grad():
            others = _exclusive_products(v.detach())  # (L, R, d, n)
            grad = (d1.view(L, R, d, n) * others).sum(1)  # (L, d, n)
            lap = (d2.view(L, R, d, n) * others).sum((1, 2))  # (L, n)
            jet = torch.cat([out.detach().unsqueeze(0), grad.permute(1, 2, 0), lap.T.unsqueeze(0)], 0)
        return out, jet

    def jet(self, x: Tensor) -> Tensor:
        """Value, gradient and Laplacian of every output: ``(d + 2, n, L)``, no graph."""
        with torch.no_grad():
            return self.value_and_jet(x)[1]

    def _factors(self, t: Tensor, derivatives: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Every 1D factor ``v = g h`` at its coordinate ``t (G, n, 1)``: value (with graph), ``v'``, ``v''``
        (without), each ``(G, n)``."""
        act = ACTIVATIONS[self.activation]
        z = t * self.first_weight + self.first_bias  # (G, n, H)
        h = act.value(z)
        if derivatives:
            with torch.no_grad():
                s1, s2 = act.derivatives(z.detach())
                w = self.first_weight.detach()  # z' = w, z'' = 0
                h1, h2 = s1 * w, s2 * w * w  # (G, n, H)
        for weight, bias in zip(self.weights, self.biases):
            z = torch.baddbmm(bias, h, weight)
            h = act.value(z)
            if derivatives:
                with torch.no_grad():
                    s1, s2 = act.derivatives(z.detach())
                    z1, z2 = torch.bmm(h1, weight.detach()), torch.bmm(h2, weight.detach())
                    h1, h2 = s1 * z1, s2 * z1 * z1 + s1 * z2
        u = torch.baddbmm(self.out_bias, h, self.out_weight).squeeze(-1)  # (G, n)
        u1 = u2 = None
        if derivatives:
            with torch.no_grad():
                w = self.out_weight.detach()
                u1, u2 = torch.bmm(h1, w).squeeze(-1), torch.bmm(h2, w).squeeze(-1)
        if self.box is None:
            return u, u1, u2
        g, g1, g2 = box_factor(t.squeeze(-1), self.box, self.box_center)
        if not derivatives:
            return g * u, None, None
        with torch.no_grad():
            ud = u.detach()
            v1, v2 = g1 * ud + g * u1, g2 * ud + 2 * g1 * u1 + g * u2
        return g * u, v1, v2
