"""The registry of named problems and methods behind ``neuralsvd run`` and ``neuralsvd list``, and the
builders that turn a configuration into an operator, a loss and a model.

Problem modules (:mod:`.presets`, :mod:`.data_presets`) register into :data:`PROBLEMS` with
:func:`register`; they import this module, never each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .. import models, sampling
from ..losses import NestedLoRA, NeuralEF, SpectralLoss, SpIN
from ..operators.base import Operator
from ..separable import SeparableMLP
from .config import ConfigError, ExperimentConfig

__all__ = [
    "METHODS",
    "PROBLEMS",
    "Problem",
    "build_model",
    "config_sampler",
    "get_problem",
    "loss_modes",
    "make_loss",
    "make_model",
    "make_operator",
    "register",
    "spread_envelope_scales",
]


@dataclass(frozen=True)
class Problem:
    """A named experiment: a one-line description, default configuration, operator builder and,
    optionally, a model builder ``(config, operator) -> model`` (default: :func:`make_model` on the
    operator's input dimension; SVD problems return a ``(left, right)`` pair), extra metrics and its own
    eigenfunction figure."""

    name: str
    description: str
    default_config: Callable[[], ExperimentConfig]
    build_operator: Callable[[dict[str, Any]], Operator]
    build_model: Callable[[ExperimentConfig, Operator], Any] | None = None
    #: ``(result, config) -> dict`` of extra metrics.json fields
    extra_metrics: Callable[[Any, ExperimentConfig], dict[str, Any]] | None = None
    #: ``(result, config, path)`` drawing eigenfunctions.png where the 1D/2D grid plot does not apply
    plot: Callable[[Any, ExperimentConfig, Any], None] | None = None
    #: ``config -> None``: replaces ``"auto"`` operator settings by values chosen from the whole
    #: configuration (e.g. the number of modes), in place, before the operator is built; the runner
    #: writes config.json after, so the chosen values are recorded and reused by :func:`neuralsvd.load`
    prepare: Callable[[ExperimentConfig], None] | None = None
    #: modes pinned in front of the ``config.modes`` learned ones (e.g. 1: a Koopman operator's constant, when
    #: ``--modes L`` counts the modes beyond it): the loss and the result hold ``config.modes + pinned_modes``
    pinned_modes: int = 0


#: every named problem, by name (filled by :func:`register`)
PROBLEMS: dict[str, Problem] = {}


def register(*problems: Problem) -> None:
    """Add problems to :data:`PROBLEMS` (a name may be registered once)."""
    for p in problems:
        if p.name in PROBLEMS:
            raise ValueError(f"problem {p.name!r} is already registered")
        PROBLEMS[p.name] = p


METHODS: dict[str, tuple[str, Callable[[int], SpectralLoss]]] = {
    "neuralsvd-seq": ("NestedLoRA, sequential nesting (the paper's best); control-variate moments where unbiased",
                      lambda L: NestedLoRA(L, nesting="sequential")),
    "neuralsvd-joint": ("NestedLoRA, joint nesting (uniform weights); control-variate moments where unbiased",
                        lambda L: NestedLoRA(L, nesting="joint")),
    "neuralsvd-seq-paper": ("NestedLoRA, sequential nesting, the paper's plain half-batch moments",
                            lambda L: NestedLoRA(L, nesting="sequential", control_variate=False)),
    "neuralsvd-joint-paper": ("NestedLoRA, joint nesting, the paper's plain half-batch moments",
                              lambda L: NestedLoRA(L, nesting="joint", control_variate=False)),
    "neuralsvd-sanger": ("NestedLoRA, sequential, Sanger-type deflation (a pseudo-gradient, as NestedOMM's)",
                         lambda L: NestedLoRA(L, nesting="sequential", deflation="sanger")),
    "spin": ("SpIN baseline (Pfau et al. 2019): whitened trace, masked gradient, moving averages (decay 0.01)",
             lambda L: SpIN(L, decay=0.01)),
    "neuralef": ("NeuralEF baseline (Deng et al. 2022): batch-normalized outputs, asymmetric deflation",
                 lambda L: NeuralEF(L)),
    "neuralef-unbiased": ("NeuralEF, μ-EigenGame variant (the NeuralSVD paper's baseline): half-batch overlaps",
                          lambda L: NeuralEF(L, unbiased=True)),
}


def spread_envelope_scales(num_modes: int, base: float = 1.2) -> tuple[float, ...]:
    """Initial envelope scales ``s_l = base (1 + 2 sqrt(l))``: later modes extend further.

    A prior for Coulomb-like problems, whose ``l``-th state lies in shell ``n ≈ sqrt(l)`` and decays like
    ``e^{-r/(2n+1)}``; it errs on the wide side (an MLP can add decay, it cannot add growth)."""
    return tuple(round(base * (1 + 2 * math.sqrt(l)), 3) for l in range(num_modes))


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (tuple, list)) else [value]


def config_sampler(dim: int, params: dict[str, Any]) -> sampling.Sampler:
    """An equal-weight mixture of one component per scale: ``sampler_std`` (Gaussians ``N(0, σ² I)``,
    truncated to ``[-bound, bound]^d`` if ``sampler_bound``) and ``sampler_exp_scale`` (radial exponentials
    ``∝ e^{-|x|/a}``); a single component is used as is."""
    bound = params.get("sampler_bound")
    comps: list[sampling.Sampler] = [
        sampling.Gaussian(dim, s) if bound is None else sampling.TruncatedGaussian(dim, s, bound)
        for s in _as_list(params.get("sampler_std"))
    ]
    comps += [sampling.RadialExponential(dim, a) for a in _as_list(params.get("sampler_exp_scale"))]
    if not comps:
        raise ConfigError("the operator needs a sampler: set operator.sampler_std and/or operator.sampler_exp_scale")
    return comps[0] if len(comps) == 1 else sampling.Mixture(comps)


def get_problem(name: str) -> Problem:
    if name not in PROBLEMS:
        raise ConfigError(f"unknown problem {name!r}; valid problems: {', '.join(PROBLEMS)}")
    return PROBLEMS[name]


def make_loss(method: str, num_modes: int) -> SpectralLoss:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[method][1](num_modes)


def loss_modes(config: ExperimentConfig) -> int:
    """The number of modes the loss and the result hold: ``config.modes`` plus the problem's pinned ones."""
    return config.modes + get_problem(config.problem).pinned_modes


def make_operator(config: ExperimentConfig) -> Operator:
    """The operator of ``config`` (after the problem's :attr:`Problem.prepare`, which may fill in
    ``config.operator``)."""
    problem = get_problem(config.problem)
    if problem.prepare is not None:
        problem.prepare(config)
    return problem.build_operator(config.operator)


def build_model(config: ExperimentConfig, operator: Operator) -> Any:
    """The model(s) for ``config``: the problem's own builder, else :func:`make_model`."""
    problem = get_problem(config.problem)
    if problem.build_model is not None:
        return problem.build_model(config, operator)
    return make_model(config, operator.dim)


def make_model(config: ExperimentConfig, in_features: int) -> nn.Module:
    m = config.model
    kinds = {"parallel_mlp": models.ParallelMLP, "mlp": models.MLP}
    if m.kind == "separable":
        return SeparableMLP(in_features, config.modes, rank=m.rank, hidden=m.hidden, activation=m.activation, box=m.box)
    if m.kind not in kinds:
        raise ConfigError(f"unknown model kind {m.kind!r}; valid: {', '.join([*kinds, 'separable'])}")
    scale = spread_envelope_scales(config.modes) if m.envelope_scale == "spread" else m.envelope_scale
    return kinds[m.kind](in_features, config.modes, hidden=m.hidden, activation=m.activation,
                         fourier_features=m.fourier_features, fourier_scale=m.fourier_scale,
                         envelope=m.envelope, envelope_scale=scale, box=m.box, radial=m.radial)
