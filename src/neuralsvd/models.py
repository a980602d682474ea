"""Function approximators ``x (n, d) -> (n, L)``: one output column per learned mode.

Any ``nn.Module`` with that signature works with :func:`neuralsvd.fit`. The models here add a
``jet(x)`` method (value, gradient and Laplacian in one forward pass, see :mod:`neuralsvd.autodiff`) so
that differential operators get exact second derivatives at the cost of a few forward passes.

* :class:`ParallelMLP`: ``L`` disjoint MLPs evaluated as one batched module (stacked weights, batched
  matmul): the paper's architecture, one network per mode.
* :class:`MLP`: one shared trunk with ``L`` outputs.
* :class:`Tabular`: one free value per (point, mode), for finite operators on indices.

Both MLPs accept optional shared random Fourier features, a learnable per-mode radial envelope
``exp(-|x| / s_l)`` and the SpIN box factor ``Π_i (sqrt(2D² - x_i²) - D)`` that vanishes on the boundary
of ``[-D, D]^d``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .autodiff import jet_elementwise, jet_input, jet_product

__all__ = ["ParallelMLP", "MLP", "Tabular", "ACTIVATIONS"]


def _softplus(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(h)
    return nn.functional.softplus(h), s, s * (1 - s)


def _tanh(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(h)
    d1 = 1 - t * t
    return t, d1, -2 * t * d1


def _sin(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sin(h)
    return s, torch.cos(h), -s


def _silu(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(h)
    return h * s, s * (1 + h * (1 - s)), s * (1 - s) * (2 + h * (1 - 2 * s))


#: name -> h -> (σ(h), σ'(h), σ''(h))
ACTIVATIONS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]] = {
    "softplus": _softplus,
    "tanh": _tanh,
    "sin": _sin,
    "silu": _silu,
}


class _BatchedMLP(nn.Module):
    """``groups`` independent MLPs sharing one input, run as batched matmuls.

    Output shape ``(n, groups * out_features)``, group-major. The first layer's weight is stored as
    ``(in, groups, hidden)`` so that it is one GEMM over all groups.
    """

    def __init__(
        self,
        in_features: int,
        groups: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str,
        fourier_features: int,
        fourier_scale: float,
        envelope: bool,
        envelope_scale: float,
        box: float | None,
    ):
        super().__init__()
        for name, value in (("in_features", in_features), ("num_modes", groups * out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        hidden = tuple(int(h) for h in hidden)
        if len(hidden) == 0 or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
        if isinstance(fourier_features, bool) or not isinstance(fourier_features, int) or fourier_features < 0:
            raise ValueError(f"fourier_features must be an integer >= 0, got {fourier_features!r}")
        for name, value, on in (("fourier_scale", fourier_scale, fourier_features > 0),
                                ("envelope_scale", envelope_scale, envelope)):
            if on and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if box is not None and not box > 0:
            raise ValueError(f"box must be a positive half-width or None, got {box!r}")
        self.in_features, self.groups, self.out_features = in_features, groups, out_features
        self.activation = activation
        self.box = None if box is None else float(box)
        if fourier_features > 0:
            # shared random frequencies; features [cos 2π xB, sin 2π xB]
            self.register_buffer("frequencies", fourier_scale * torch.randn(in_features, fourier_features))
            width_in = 2 * fourier_features
        else:
            self.frequencies = None
            width_in = in_features
        widths = (width_in, *hidden)
        # He (Kaiming-normal) initialization, zero biases
        self.first_weight = nn.Parameter(torch.randn(width_in, groups, hidden[0]) * math.sqrt(2.0 / width_in))
        self.first_bias = nn.Parameter(torch.zeros(groups, 1, hidden[0]))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(groups, a, b) * math.sqrt(2.0 / a)) for a, b in zip(widths[1:], widths[2:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(groups, 1, b)) for b in widths[2:])
        self.out_weight = nn.Parameter(torch.randn(groups, hidden[-1], out_features) * math.sqrt(2.0 / hidden[-1]))
        self.out_bias = nn.Parameter(torch.zeros(groups, 1, out_features))
        self.log_envelope_scale = (
            nn.Parameter(torch.full((groups * out_features,), math.log(envelope_scale))) if envelope else None
        )

    @property
    def num_modes(self) -> int:
        return self.groups * self.out_features

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected x of shape (n, {self.in_features}), got {tuple(x.shape)}")

    # -- plain forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        n = x.shape[0]
        h = self._features(x)  # (n, F)
        act = ACTIVATIONS[self.activation]
        h = (h @ self.first_weight.flatten(1)).view(n, self.groups, -1).transpose(0, 1) + self.first_bias  # (G, n, H)
        h = act(h)[0]
        for w, b in zip(self.weights, self.biases):
            h = act(torch.baddbmm(b, h, w))[0]
        out = torch.baddbmm(self.out_bias, h, self.out_weight)  # (G, n, out)
        out = out.permute(1, 0, 2).reshape(n, self.num_modes)  # (n, L)
        if self.log_envelope_scale is not None:
            out = out * torch.exp(-x.norm(dim=1, keepdim=True) / self.log_envelope_scale.exp())
        if self.box is not None:
            out = out * self._box_factor(x)[0].prod(1, keepdim=True)
        return out

    def _features(self, x: Tensor) -> Tensor:
        if self.frequencies is None:
            return x
        z = 2 * math.pi * x @ self.frequencies
        return torch.cat([torch.cos(z), torch.sin(z)], 1)

    # -- jet forward (value, gradient, Laplacian) -------------------------------------------------------
    def jet(self, x: Tensor) -> Tensor:
        """Value, gradient and Laplacian of every output: a jet of shape ``(d + 2, n, L)``."""
        self._check(x)
        n, d = x.shape
        k = d + 2
        feats = self._features_jet(x)  # (K, n, F)
        act = ACTIVATIONS[self.activation]
        h = (feats.reshape(k * n, -1) @ self.first_weight.flatten(1)).view(k, n, self.groups, -1)
        h = h.permute(0, 2, 1, 3)  # (K, G, n, H)
        h = torch.cat([h[:1] + self.first_bias, h[1:]], 0)
        h = jet_elementwise(h, act)
        for w, b in zip(self.weights, self.biases):
            h = self._jet_bmm(h, w, b)
            h = jet_elementwise(h, act)
        out = self._jet_bmm(h, self.out_weight, self.out_bias)  # (K, G, n, out)
        out = out.permute(0, 2, 1, 3).reshape(k, n, self.num_modes)  # (K, n, L)
        if self.log_envelope_scale is not None:
            out = jet_product(out, self._envelope_jet(x))
        if self.box is not None:
            out = jet_product(out, self._box_jet(x))
        return out

    @staticmethod
    def _jet_bmm(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """Affine map of a ``(K, G, n, a)`` jet by per-group weights ``(G, a, b)``: one bmm over groups."""
        k, g, n, a = h.shape
        out = torch.bmm(h.transpose(0, 1).reshape(g, k * n, a), w).view(g, k, n, -1).transpose(0, 1)
        return torch.cat([out[:1] + b, out[1:]], 0)

    def _features_jet(self, x: Tensor) -> Tensor:
        if self.frequencies is None:
            return jet_input(x)
        b = 2 * math.pi * self.frequencies  # (d, F)
        z = x @ b
        c, s = torch.cos(z), torch.sin(z)  # (n, F)
        grad = torch.cat([-s.unsqueeze(0) * b.unsqueeze(1), c.unsqueeze(0) * b.unsqueeze(1)], 2)  # (d, n, 2F)
        value = torch.cat([c, s], 1)  # (n, 2F)
        lap = -(b * b).sum(0).repeat(2) * value
        return torch.cat([value.unsqueeze(0), grad, lap.unsqueeze(0)], 0)

    def _envelope_jet(self, x: Tensor) -> Tensor:
        """Jet of ``exp(-|x| / s_l)``, ``(K, n, L)``; uses ``∇r = x/r`` and ``Δr = (d-1)/r``."""
        d = x.shape[1]
        r = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)  # (n, 1)
        inv_s = torch.exp(-self.log_envelope_scale)  # (L,)
        e = torch.exp(-r * inv_s)  # (n, L)
        grad = (-(e * inv_s)).unsqueeze(0) * (x / r).T.unsqueeze(-1)  # (d, n, L)
        lap = e * inv_s * (inv_s - (d - 1) / r)
        return torch.cat([e.unsqueeze(0), grad, lap.unsqueeze(0)], 0)

    def _box_factor(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-axis factor ``g(t) = sqrt(2D² - t²) - D`` with ``g'`` and ``g''``, each ``(n, d)``."""
        two_d2 = 2 * self.box**2
        root = torch.sqrt((two_d2 - x * x).clamp_min(0))
        return root - self.box, -x / root, -two_d2 / root**3

    def _box_jet(self, x: Tensor) -> Tensor:
        g, g1, g2 = self._box_factor(x)
        d = x.shape[1]
        others = torch.stack([torch.cat([g[:, :i], g[:, i + 1 :]], 1).prod(1) for i in range(d)], 1)  # (n, d)
        value = g.prod(1, keepdim=True)  # (n, 1)
        grad = (g1 * others).T.unsqueeze(-1)  # (d, n, 1)
        lap = (g2 * others).sum(1, keepdim=True)
        return torch.cat([value.unsqueeze(0), grad, lap.unsqueeze(0)], 0)


class ParallelMLP(_BatchedMLP):
    """``num_modes`` disjoint MLPs ``R^d -> R`` (one per mode) as one batched module.

    Args:
        in_features: input dimension ``d``.
        num_modes: number of networks ``L``; the output is ``(n, L)``.
        hidden: hidden widths of each network (the paper: ``(128, 128, 128)``).
        activation: one of :data:`ACTIVATIONS` (the paper: ``"softplus"``).
        fourier_features: number of shared random frequencies (0 = raw inputs); features are
            ``[cos 2π xB, sin 2π xB]`` with ``B ~ N(0, fourier_scale²)``.
        envelope: multiply mode ``l`` by ``exp(-|x| / s_l)`` with learnable ``s_l`` (init ``envelope_scale``).
        box: half-width ``D`` of the SpIN box factor, or ``None``.
    """

    def __init__(
        self,
        in_features: int,
        num_modes: int,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "softplus",
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        envelope: bool = False,
        envelope_scale: float = 10.0,
        box: float | None = None,
    ):
        super().__init__(in_features, num_modes, hidden, 1, activation, fourier_features, fourier_scale,
                         envelope, envelope_scale, box)


class MLP(_BatchedMLP):
    """One MLP ``R^d -> R^L`` with a shared trunk (same options as :class:`ParallelMLP`)."""

    def __init__(
        self,
        in_features: int,
        num_modes: int,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "softplus",
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        envelope: bool = False,
        envelope_scale: float = 10.0,
        box: float | None = None,
    ):
        super().__init__(in_features, 1, hidden, num_modes, activation, fourier_features, fourier_scale,
                         envelope, envelope_scale, box)


class Tabular(nn.Module):
    """One learnable value per (point, mode): ``f(i) = table[i]`` for integer indices ``i`` (n,)."""

    def __init__(self, num_points: int, num_modes: int, init_std: float = 0.1):
        super().__init__()
        for name, value in (("num_points", num_points), ("num_modes", num_modes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_points, self.num_modes = num_points, num_modes
        self.table = nn.Parameter(init_std * torch.randn(num_points, num_modes))

    def forward(self, index: Tensor) -> Tensor:
        if index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Tabular expects integer indices of shape (n,), got dtype {index.dtype}")
        return self.table[index.reshape(-1)]
