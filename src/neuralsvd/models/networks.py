"""Function approximators ``x (n, d) -> (n, L)``: one output column per learned mode.

Any ``nn.Module`` with that signature works with :func:`neuralsvd.fit`. The MLPs here add
``value_and_jet(x)``: the outputs (with graph) and their gradient and Laplacian (without) in one forward
pass, see :mod:`neuralsvd.autodiff`, so differential operators get exact second derivatives at the cost
of ``d + 1`` extra matmul channels per layer.

* :class:`ParallelMLP`: ``L`` disjoint MLPs evaluated as one batched module (stacked weights, batched
  matmul): the paper's architecture, one network per mode.
* :class:`MLP`: one shared trunk with ``L`` outputs.
* :class:`Tabular`: one free value per (point, mode), for finite operators on indices.

Both MLPs accept optional shared random Fourier features, the radius ``|x|`` as an extra input (a cusp
at the origin becomes representable), a learnable per-mode radial envelope ``exp(-|x| / s_l)`` and the
SpIN box factor ``Π_i (sqrt(2D² - t_i²) - D)``, ``t = x - c``, that vanishes on the boundary
of the box ``[c - D, c + D]^d`` (scaled to 1 at the centre ``c``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..numerics.autodiff import jet_input, jet_product
from .box import box_bounds, box_factor

__all__ = ["ACTIVATIONS", "MLP", "Activation", "ParallelMLP", "Standardize", "Tabular"]


class Activation(NamedTuple):
    """An activation ``σ`` with ``derivatives(h) -> (σ'(h), σ''(h))`` for forward jets."""

    value: Callable[[Tensor], Tensor]
    derivatives: Callable[[Tensor], tuple[Tensor, Tensor]]


def _softplus_derivatives(h: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(h)
    return s, s * (1 - s)


def _tanh_derivatives(h: Tensor) -> tuple[Tensor, Tensor]:
    t = torch.tanh(h)
    d1 = 1 - t * t
    return d1, -2 * t * d1


def _sin_derivatives(h: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cos(h), -torch.sin(h)


def _silu_derivatives(h: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s)), s * (1 - s) * (2 + h * (1 - 2 * s))


ACTIVATIONS: dict[str, Activation] = {
    "softplus": Activation(nn.functional.softplus, _softplus_derivatives),
    "tanh": Activation(torch.tanh, _tanh_derivatives),
    "sin": Activation(torch.sin, _sin_derivatives),
    "silu": Activation(nn.functional.silu, _silu_derivatives),
}


class OutputGain(nn.Module):
    """A fixed per-mode factor on a model's outputs: the buffer ``output_gain`` (saved with the model, not
    trained; mode ``l``'s entries in the order of the outputs) and the flag ``output_scaled``, set once
    :meth:`scale_outputs` was called, so that a later ``fit`` leaves the size as it is
    (:mod:`neuralsvd.training.calibration`, :mod:`neuralsvd.training.warm_start`)."""

    output_gain: Tensor
    output_scaled: Tensor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # state saved before the output gain existed: gain 1, and never calibrate a model that was trained
        state_dict.setdefault(prefix + "output_gain", torch.ones_like(self.output_gain))
        state_dict.setdefault(prefix + "output_scaled", torch.ones_like(self.output_scaled))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def scale_outputs(self, factors: Tensor) -> None:
        """Multiply output ``l`` by ``factors[l]`` (``(L,)``, positive) from now on, and mark the model as
        scaled (``output_scaled``)."""
        self.output_gain.mul_(factors.to(self.output_gain).reshape(self.output_gain.shape))
        self.output_scaled.fill_(True)


class _BatchedMLP(OutputGain):
    """``groups`` independent MLPs sharing one input, run as batched matmuls: ``L`` groups of one output
    when ``disjoint``, else one group of ``L`` outputs.

    Output shape ``(n, groups * out_features)``, group-major. The first layer's weight is stored as
    ``(in, groups, hidden)`` so that it is one GEMM over all groups.
    """

    disjoint: bool

    def __init__(
        self,
        in_features: int,
        num_modes: int,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "softplus",
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        envelope: bool = False,
        envelope_scale: float | Sequence[float] = 10.0,
        box: float | Sequence[float] | None = None,
        radial: bool = False,
    ):
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("num_modes", num_modes)
        groups, out_features = (num_modes, 1) if self.disjoint else (1, num_modes)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        hidden = tuple(int(h) for h in hidden)
        if len(hidden) == 0 or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
        check_positive_int("fourier_features", fourier_features, 0)
        scales = list(envelope_scale) if isinstance(envelope_scale, (tuple, list)) else [envelope_scale] * num_modes
        if envelope and len(scales) != num_modes:
            raise ValueError(f"envelope_scale must be one number or {num_modes} (one per mode), got {envelope_scale!r}")
        for what, given, values, on in (("fourier_scale must be", fourier_scale, [fourier_scale], fourier_features > 0),
                                        ("envelope_scale must be one or one per mode,", envelope_scale, scales, envelope)):
            if on and not all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in values):
                raise ValueError(f"{what} a positive finite number, got {given!r}")
        low, high = box_bounds(box)
        self.in_features, self.groups, self.out_features = in_features, groups, out_features
        self.activation = activation
        self.box = None if box is None else 0.5 * (high - low)  # half-width D
        self.box_center = 0.0 if box is None else 0.5 * (high + low)
        self.radial = bool(radial)
        self.widths = hidden  # hidden widths, as given
        if fourier_features > 0:
            # shared random frequencies; features [cos 2π xB, sin 2π xB]
            self.register_buffer("frequencies", fourier_scale * torch.randn(in_features, fourier_features))
            width_in = 2 * fourier_features
        else:
            self.frequencies = None
            width_in = in_features
        width_in += self.radial
        widths = (width_in, *hidden)
        # He (Kaiming-normal) initialization, zero biases
        self.first_weight = nn.Parameter(torch.randn(width_in, groups, hidden[0]) * math.sqrt(2.0 / width_in))
        self.first_bias = nn.Parameter(torch.zeros(groups, 1, hidden[0]))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(groups, a, b) * math.sqrt(2.0 / a)) for a, b in itertools.pairwise(widths[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(groups, 1, b)) for b in widths[2:])
        self.out_weight = nn.Parameter(torch.randn(groups, hidden[-1], out_features) * math.sqrt(2.0 / hidden[-1]))
        self.out_bias = nn.Parameter(torch.zeros(groups, 1, out_features))
        # a fixed (not trained) per-mode factor on the outputs, set once by scale_outputs (neuralsvd.calibration)
        self.register_buffer("output_gain", torch.ones(groups, 1, out_features))
        self.register_buffer("output_scaled", torch.zeros((), dtype=torch.bool))
        self.log_envelope_scale = (
            nn.Parameter(torch.tensor(scales, dtype=torch.get_default_dtype()).log()) if envelope else None
        )

    @property
    def num_modes(self) -> int:
        return self.groups * self.out_features

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected x of shape (n, {self.in_features}), got {tuple(x.shape)}")

    # -- forward, optionally with a jet (value, gradient, Laplacian) -----------------------------------
    def mode_axes(self) -> dict[str, int | None]:
        """Per parameter, the axis along which slice ``m`` feeds output ``m`` only, or None when shared
        by several modes (used by :class:`~neuralsvd.SpIN` to store Jacobian averages compactly).
        Disjoint networks: every parameter, along the network axis (``(in, L, hidden)`` for the first
        weight, ``(L, ...)`` elsewhere). Shared trunk: the output layer ``(1, hidden, L)``, ``(1, 1, L)``
        and the envelope scales ``(L,)``."""
        names = [name for name, _ in self.named_parameters()]
        if self.disjoint:
            return {name: 1 if name == "first_weight" else 0 for name in names}
        per_mode = {"out_weight": 2, "out_bias": 2, "log_envelope_scale": 0}
        return {name: per_mode.get(name) for name in names}

    @torch.no_grad()
    def reset_mode(self, mode: int, generator: torch.Generator) -> None:
        """Draw the parameters that feed output ``mode`` only afresh, as at construction (He-normal weights,
        zero biases; the envelope scale and the output gain are kept): the whole network of ``mode`` when
        disjoint, else its column of the output layer. Used to revive a collapsed mode (:mod:`neuralsvd.training.revival`)."""
        def he(shape: tuple[int, ...], fan_in: int, like: Tensor) -> Tensor:
            return torch.randn(shape, generator=generator, device=like.device).to(like.dtype) * math.sqrt(2.0 / fan_in)

        if not self.disjoint:
            w = self.out_weight[0, :, mode]
            w.copy_(he(tuple(w.shape), w.shape[0], w))
            self.out_bias[0, 0, mode] = 0
            return
        w = self.first_weight[:, mode]
        w.copy_(he(tuple(w.shape), self.first_weight.shape[0], w))
        for w in (*self.weights, self.out_weight):
            w[mode] = he(tuple(w[mode].shape), w.shape[1], w)
        for b in (self.first_bias, *self.biases, self.out_bias):
            b[mode] = 0

    def output_basis(self, x: Tensor, source: int, mode: int) -> Tensor:
        """``(n, H + 1)``: network ``source``'s last hidden layer and a constant, times output ``mode``'s
        envelope and box factors; after :meth:`transplant` ``(source, mode, c)`` output ``mode`` is
        ``output_basis(x, source, mode) @ c``. Disjoint networks only."""
        if not self.disjoint:
            raise ValueError("output_basis needs disjoint networks (ParallelMLP)")
        h = self.hidden(x)[0][source]  # (n, H)
        basis = torch.cat([h, torch.ones_like(h[:, :1])], 1)  # (n, H + 1)
        if self.log_envelope_scale is not None:
            basis = basis * self._envelope_value(x)[:, mode : mode + 1]
        if self.box is not None:
            basis = basis * self._box_factor(x)[0].prod(1, keepdim=True)
        return basis

    @torch.no_grad()
    def transplant(self, source: int, mode: int, coefficients: Tensor) -> None:
        """Network ``mode`` becomes a copy of network ``source``'s hidden layers with the output layer
        ``coefficients`` ``(H + 1,)`` (weights, then the bias) and output gain 1 (see :meth:`output_basis`)."""
        self.first_weight[:, mode] = self.first_weight[:, source]
        for b in (self.first_bias, *self.weights, *self.biases):
            b[mode] = b[source]
        self.out_weight[mode, :, 0] = coefficients[:-1].to(self.out_weight)
        self.out_bias[mode, 0, 0] = coefficients[-1].to(self.out_bias)
        self.output_gain[mode] = 1

    def forward(self, x: Tensor) -> Tensor:
        return self.value_and_jet(x, derivatives=False)[0]

    def value_and_jet(self, x: Tensor, derivatives: bool = True) -> tuple[Tensor, Tensor | None]:
        """Outputs ``(n, L)`` (differentiable in the parameters) and, if ``derivatives``, their jet
        ``(d + 2, n, L)`` (value, ``∂/∂x_i``, Laplacian; computed without a graph).

        One pass: the value channel is the ordinary forward; the ``d + 1`` derivative channels are
        pushed through the same layers as one batched matmul per layer (no bias), with the chain rule
        ``∇σ(z) = σ'(z) ∇z``, ``Δσ(z) = σ''(z) |∇z|² + σ'(z) Δz`` at each activation.
        """
        n = x.shape[0]
        h, chans = self.hidden(x, derivatives)
        out = torch.baddbmm(self.out_bias, h, self.out_weight) * self.output_gain  # (G, n, out)
        value = out.transpose(0, 1).reshape(n, self.num_modes)  # (n, L)
        jet = None
        if derivatives:
            with torch.no_grad():
                d_out = self._propagate(chans, self.out_weight) * self.output_gain.unsqueeze(1)  # (G, d+1, n, out)
                d_out = d_out.permute(1, 2, 0, 3).reshape(-1, n, self.num_modes)  # (d+1, n, L)
                jet = torch.cat([value.detach().unsqueeze(0), d_out], 0)  # (d+2, n, L)
        if self.log_envelope_scale is not None:
            value = value * self._envelope_value(x)
            if jet is not None:
                with torch.no_grad():
                    jet = jet_product(jet, self._envelope_jet(x))
        if self.box is not None:
            value = value * self._box_factor(x)[0].prod(1, keepdim=True)
            if jet is not None:
                with torch.no_grad():
                    jet = jet_product(jet, self._box_jet(x))
        return value, jet

    def hidden(self, x: Tensor, derivatives: bool = False) -> tuple[Tensor, Tensor | None]:
        """The last hidden layer ``(G, n, H)`` (``G = L`` disjoint networks, else 1; with graph) and, if
        ``derivatives``, its derivative channels ``(G, d+1, n, H)`` (gradient, Laplacian; without graph).
        The output layer maps it to the outputs; :meth:`value_and_jet` builds on it."""
        self._check(x)
        n, groups = x.shape[0], self.groups
        z = (self._features(x) @ self.first_weight.flatten(1)).view(n, groups, -1).transpose(0, 1)
        z = z + self.first_bias  # (G, n, H)
        chans = None
        if derivatives:
            with torch.no_grad():
                feats = self._features_jet(x)[1:]  # (d+1, n, F)
                k = feats.shape[0]
                chans = (feats.reshape(k * n, -1) @ self.first_weight.detach().flatten(1)).view(k, n, groups, -1)
                chans = chans.permute(2, 0, 1, 3).contiguous()  # (G, d+1, n, H)
        h, chans = self._activate(z, chans)
        for w, b in zip(self.weights, self.biases):
            h, chans = self._activate(torch.baddbmm(b, h, w), self._propagate(chans, w))
        return h, chans

    def jet(self, x: Tensor) -> Tensor:
        """Value, gradient and Laplacian of every output: a jet of shape ``(d + 2, n, L)``, no graph."""
        with torch.no_grad():
            return self.value_and_jet(x)[1]

    def _activate(self, z: Tensor, chans: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``σ(z)`` (with graph) and the activated derivative channels ``(G, d+1, n, H)`` (without)."""
        act = ACTIVATIONS[self.activation]
        h = act.value(z)
        if chans is None:
            return h, None
        with torch.no_grad():
            s1, s2 = act.derivatives(z.detach())  # (G, n, H)
            grads = chans[:, :-1]  # (G, d, n, H)
            out = torch.empty_like(chans)
            torch.mul(grads, s1.unsqueeze(1), out=out[:, :-1])
            out[:, -1] = s2 * (grads * grads).sum(1) + s1 * chans[:, -1]
        return h, out

    @staticmethod
    def _propagate(chans: Tensor | None, w: Tensor) -> Tensor | None:
        """Linear part of a layer on the derivative channels: ``(G, k, n, a) @ (G, a, b)`` as one bmm."""
        if chans is None:
            return None
        with torch.no_grad():
            g, k, n, a = chans.shape
            return torch.bmm(chans.view(g, k * n, a), w.detach()).view(g, k, n, -1)

    def _features(self, x: Tensor) -> Tensor:
        if self.frequencies is None:
            feats = x
        else:
            z = 2 * math.pi * x @ self.frequencies
            feats = torch.cat([torch.cos(z), torch.sin(z)], 1)
        return torch.cat([feats, x.norm(dim=1, keepdim=True)], 1) if self.radial else feats

    def _features_jet(self, x: Tensor) -> Tensor:
        if self.frequencies is None:
            jet = jet_input(x)
        else:
            b = 2 * math.pi * self.frequencies  # (d, F)
            z = x @ b
            c, s = torch.cos(z), torch.sin(z)  # (n, F)
            grad = torch.cat([-s.unsqueeze(0) * b.unsqueeze(1), c.unsqueeze(0) * b.unsqueeze(1)], 2)  # (d, n, 2F)
            value = torch.cat([c, s], 1)  # (n, 2F)
            lap = -(b * b).sum(0).repeat(2) * value
            jet = torch.cat([value.unsqueeze(0), grad, lap.unsqueeze(0)], 0)
        return torch.cat([jet, _radius_jet(x)], 2) if self.radial else jet

    def _envelope_value(self, x: Tensor) -> Tensor:
        return torch.exp(-x.norm(dim=1, keepdim=True) / self.log_envelope_scale.exp())  # (n, L)

    def _envelope_jet(self, x: Tensor) -> Tensor:
        """Jet of ``exp(-r / s_l)``, ``(K, n, L)``: ``∇e = -e ∇r / s``, ``Δe = e (|∇r|² / s - Δr) / s``."""
        jet_r = _radius_jet(x)  # (d+2, n, 1)
        r, grad_r, lap_r = jet_r[0], jet_r[1:-1], jet_r[-1]
        inv_s = torch.exp(-self.log_envelope_scale)  # (L,)
        e = torch.exp(-r * inv_s)  # (n, L)
        grad = (-(e * inv_s)).unsqueeze(0) * grad_r  # (d, n, L)
        lap = e * inv_s * (inv_s - lap_r)  # |∇r| = 1
        return torch.cat([e.unsqueeze(0), grad, lap.unsqueeze(0)], 0)

    def _box_factor(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return box_factor(x, self.box, self.box_center)

    def _box_jet(self, x: Tensor) -> Tensor:
        g, g1, g2 = self._box_factor(x)
        d = x.shape[1]
        others = torch.stack([torch.cat([g[:, :i], g[:, i + 1 :]], 1).prod(1) for i in range(d)], 1)  # (n, d)
        value = g.prod(1, keepdim=True)  # (n, 1)
        grad = (g1 * others).T.unsqueeze(-1)  # (d, n, 1)
        lap = (g2 * others).sum(1, keepdim=True)
        return torch.cat([value.unsqueeze(0), grad, lap.unsqueeze(0)], 0)


def _radius_jet(x: Tensor) -> Tensor:
    """Jet of ``r = |x|``, ``(d + 2, n, 1)``: ``r``, ``∇r = x / r``, ``Δr = (d - 1) / r`` (r clamped at the
    origin, where ``r`` has its kink)."""
    d = x.shape[1]
    r = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)  # (n, 1)
    return torch.cat([r.unsqueeze(0), (x / r).T.unsqueeze(-1), ((d - 1) / r).unsqueeze(0)], 0)


class ParallelMLP(_BatchedMLP):
    """``num_modes`` disjoint MLPs ``R^d -> R`` (one per mode) as one batched module.

    Args:
        in_features: input dimension ``d``.
        num_modes: number of networks ``L``; the output is ``(n, L)``.
        hidden: hidden widths of each network (the paper: ``(128, 128, 128)``).
        activation: one of :data:`ACTIVATIONS` (the paper: ``"softplus"``).
        fourier_features: number of shared random frequencies (0 = raw inputs); features are
            ``[cos 2π xB, sin 2π xB]`` with ``B ~ N(0, fourier_scale²)``.
        envelope: multiply mode ``l`` by ``exp(-|x| / s_l)`` with learnable ``s_l`` (init ``envelope_scale``:
            one number, or one per mode).
        box: the box of the SpIN boundary factor (zero on its faces): a half-width ``D`` (``[-D, D]^d``),
            a pair ``(low, high)`` (``[low, high]^d``), or ``None``.
        radial: append ``|x|`` to the inputs (after Fourier features, if any): functions with a cusp
            at the origin, such as hydrogen states ``∝ e^{-r/(n+½)}``, become representable exactly.
    """

    disjoint = True


class MLP(_BatchedMLP):
    """One MLP ``R^d -> R^L`` with a shared trunk (same arguments as :class:`ParallelMLP`)."""

    disjoint = False


class Tabular(OutputGain):
    """One learnable value per (point, mode): ``f(i) = table[i]`` for integer indices ``i`` (n,)."""

    def __init__(self, num_points: int, num_modes: int, init_std: float = 0.1):
        super().__init__()
        check_positive_int("num_points", num_points)
        check_positive_int("num_modes", num_modes)
        self.num_points, self.num_modes = num_points, num_modes
        self.table = nn.Parameter(init_std * torch.randn(num_points, num_modes))
        self.register_buffer("output_gain", torch.ones(num_modes))  # fixed per-mode factor (not trained)
        self.register_buffer("output_scaled", torch.zeros((), dtype=torch.bool))

    def mode_axes(self) -> dict[str, int | None]:
        """The table ``(points, L)``: column ``m`` is mode ``m``."""
        return {"table": 1}

    @torch.no_grad()
    def reset_mode(self, mode: int, generator: torch.Generator) -> None:
        """Draw column ``mode`` afresh with the root-mean-square of the table (to revive a collapsed mode)."""
        rms = self.table.pow(2).mean().sqrt()
        column = self.table[:, mode]
        column.copy_(torch.randn(column.shape, generator=generator, device=column.device).to(column.dtype) * rms)

    def forward(self, index: Tensor) -> Tensor:
        if index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Tabular expects integer indices of shape (n,), got dtype {index.dtype}")
        return self.table[index.reshape(-1)] * self.output_gain


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature (``std = 0`` features: unscaled), fixed at construction from ``data
    (N, d)`` (buffers: saved with the model); put it in front of a network for data of arbitrary scale."""

    def __init__(self, data: Tensor):
        super().__init__()
        std = data.std(0) if data.shape[0] > 1 else torch.ones(data.shape[1], dtype=data.dtype)
        self.register_buffer("mean", data.mean(0))
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
