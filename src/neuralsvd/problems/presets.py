"""Schrödinger problems (hydrogen, oscillator), registered into :mod:`.registry`.

The registry's names (``PROBLEMS``, ``METHODS``, ``get_problem``, the builders) are re-exported here for
code that imported them from this module.
"""

from __future__ import annotations

import math
from typing import Any

from .. import operators
from ..numerics import sampling
from ..operators.base import Operator
from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from .registry import (  # noqa: F401
    METHODS,
    PROBLEMS,
    Problem,
    build_model,
    config_sampler,
    get_problem,
    make_loss,
    make_model,
    make_operator,
    register,
    spread_envelope_scales,
)

__all__ = ["Problem", "PROBLEMS", "METHODS", "get_problem", "make_loss", "make_model", "build_model", "make_operator",
           "hydrogen_batch_size", "hydrogen_shell_scales", "spread_envelope_scales"]


def _hydrogen_operator(p: dict[str, Any]) -> Operator:
    return operators.Hydrogen2D(charge=p["charge"], scale=p["scale"], shift=p["shift"], sampler=config_sampler(2, p),
                                laplacian=p["laplacian"], model_output=p.get("model_output", "ratio"),
                                cusps=p.get("cusps", "auto"))


def _shells_reached(modes: int) -> int:
    """How many shells of the 2D hydrogen (``2n + 1`` states each) the first ``modes`` states fill or enter."""
    return math.isqrt(modes - 1) + 1


def hydrogen_shell_scales(modes: int, charge: float = 1.0) -> tuple[float, ...]:
    """Radial-exponential sampler scales for the first ``modes`` states of the 2D hydrogen ``-Δ - Z/|x|``:
    one component ``∝ e^{-r/a_n}`` per shell ``n = 0 … n_max + 1``, the shells the modes reach (``2n + 1``
    states each, ``(n_max + 1)² ≥ modes``) and the next one, whose states the learned ones must be orthogonal
    to. ``a_n = (2n + 1)² / (2Z)``: the component's radial density ``r e^{-r/a}`` peaks where the shell's
    outermost state does (``l = n``: ``r^{2n+1} e^{-2Zr/(2n+1)}``). ``Z = 1``, 9 modes: ``0.5, 4.5, 12.5, 24.5``;
    16 modes: ``0.5, 4.5, 12.5, 24.5, 40.5`` (docs/hydrogen-study.md §10)."""
    return tuple((2 * n + 1) ** 2 / (2 * charge) for n in range(_shells_reached(modes) + 1))


def hydrogen_batch_size(modes: int) -> int:
    """Batch size for the first ``modes`` states of the 2D hydrogen: 128 while the modes reach at most three
    shells (``modes ≤ 9``), then 128 more per further shell (16 modes: 256). Measured at 9 and 16 modes
    (docs/hydrogen-study.md §10): at 16 modes and 50k steps, batch 256 reaches a subspace distance below 1e-3 on
    3 of 4 seeds, batch 128 on none of 3; beyond 16 modes the rule is an extrapolation."""
    return 128 * max(1, _shells_reached(modes) - 2)


def _prepare_hydrogen(config: ExperimentConfig) -> None:
    """The ``"auto"`` choices: ``operator.sampler_exp_scale`` (:func:`hydrogen_shell_scales` of ``config.modes``
    and the charge) and ``train.batch_size`` (:func:`hydrogen_batch_size`)."""
    if config.train.batch_size == "auto":
        config.train.batch_size = hydrogen_batch_size(config.modes)
    p = config.operator
    if p.get("sampler_exp_scale") == "auto":
        if isinstance(p["charge"], bool) or not isinstance(p["charge"], (int, float)) or not p["charge"] > 0:
            raise ConfigError(f"operator.charge must be a positive number, got {p['charge']!r}")
        p["sampler_exp_scale"] = hydrogen_shell_scales(config.modes, p["charge"])


def _oscillator_frequencies(p: dict[str, Any]) -> tuple[int, list[float]]:
    """``(dim, [ω_1..ω_dim])`` from ``operator.dim`` and ``operator.omega`` (a number or ``dim`` numbers)."""
    dim, omega = p["dim"], p["omega"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"operator.dim must be a positive integer, got {dim!r}")
    om = [omega] * dim if isinstance(omega, (int, float)) and not isinstance(omega, bool) else omega
    if not isinstance(om, (tuple, list)) or len(om) != dim:
        got = f"{len(om)} values" if isinstance(om, (tuple, list)) else repr(omega)
        raise ConfigError(f"operator.omega must be one frequency or a tuple of operator.dim = {dim} frequencies "
                          f"(one per axis), got {got}")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in om):
        raise ConfigError(f"operator.omega must hold positive numbers, got {omega!r}")
    return dim, [float(w) for w in om]


def _oscillator_operator(p: dict[str, Any]) -> Operator:
    """``shift=None`` and ``sampler_std=None`` are chosen from ``dim`` and ``ω``: in d ≤ 2 the authors'
    ``4 Σω + 8 max ω`` (16) and ``N(0, (4 / sqrt(min ω))² I)``; in d ≥ 3, where a wide Gaussian puts almost
    no samples where the states live (its mass sits at radius ``σ sqrt(d)``), ``Σω + 4 max ω`` (ground
    state and first shell at ``T > 0``, the next shell at ``T ≈ 0``) and ``|ψ_0|²`` itself,
    ``N(0, diag(1/(2ω_i)))``: with the ratio model the ground state is then a constant and the first shell
    linear."""
    dim, om = _oscillator_frequencies(p)
    shift = p.get("shift")
    if shift is None and dim >= 3:
        shift = sum(om) + 4 * max(om)
    if p.get("sampler_std") is None and p.get("sampler_exp_scale") is None:
        std = [4.0 / math.sqrt(min(om))] * dim if dim <= 2 else [1.0 / math.sqrt(2 * w) for w in om]
        sampler = sampling.Gaussian(dim, std)
    else:
        sampler = config_sampler(dim, p)
    return operators.HarmonicOscillator(dim=dim, omega=om, scale=p["scale"], shift=shift, sampler=sampler,
                                        laplacian=p["laplacian"], probes=p.get("probes", 1),
                                        model_output=p.get("model_output", "ratio"))


def _hydrogen_paper() -> ExperimentConfig:
    """The authors' recipe (experiment-facts §2), kept as a baseline for accuracy studies; their start too
    (``train.init_ratio=None``: no initial-size cap, :mod:`neuralsvd.training.calibration`)."""
    return ExperimentConfig(
        problem="hydrogen-paper", modes=16,
        operator=dict(charge=1.0, scale=100.0, shift=0.0, sampler_std=16.0, sampler_bound=None, laplacian="exact",
                      sampler_exp_scale=None, model_output="ratio", cusps=None),
        model=ModelConfig(hidden=(128, 128, 128), activation="softplus", fourier_features=1024, fourier_scale=0.1),
        train=TrainConfig(steps=500_000, batch_size=128, optimizer="rmsprop", lr=1e-4, schedule="cosine",
                          ema_decay=0.995, init_ratio=None, rescue=False),  # the authors' start: no cap, no rescue
    )


def _hydrogen() -> ExperimentConfig:
    """The CPU demo: 9 modes (n ≤ 2), see docs/hydrogen-study.md for the levers and their numbers.

    Differs from the paper's recipe (``hydrogen-paper``) in these ways: the model is ``ψ`` itself
    (``model_output="psi"``; the operator divides by ``sqrt(p)``), with the radius ``|x|`` as an input (the
    cusp at the nucleus) and a per-mode envelope ``e^{-r/s_l}`` initialized by
    :func:`spread_envelope_scales` (``envelope_scale="spread"``); samples from an equal mixture of radial
    exponentials ``∝ e^{-r/a}``, one per shell the modes reach and one for the next shell
    (``sampler_exp_scale="auto"``: :func:`hydrogen_shell_scales`); a batch that grows with the shells
    (``batch_size="auto"``: :func:`hydrogen_batch_size`, 128 at 9 modes); Adam 1e-3 without EMA; 10k steps.
    The operator is the paper's ``T = 100 (0 - H)``; ``fit``'s default initial-size cap
    (:mod:`neuralsvd.training.calibration`) is what makes it converge at this budget (100× worse without it,
    docs/convergence-study.md §8–9). Measured numbers: docs/results.md.
    """
    return ExperimentConfig(
        problem="hydrogen", modes=9,
        operator=dict(charge=1.0, scale=100.0, shift=0.0, sampler_std=None, sampler_bound=None,
                      laplacian="exact", sampler_exp_scale="auto", model_output="psi", cusps=None),
        model=ModelConfig(hidden=(128, 128, 128), activation="softplus", radial=True, envelope=True,
                          envelope_scale="spread"),
        train=TrainConfig(steps=10_000, batch_size="auto", optimizer="adam", lr=1e-3, schedule="cosine",
                          ema_decay=None, rescue=False),  # rescue: costs the 16-mode run (convergence-study §11)
    )


def _oscillator() -> ExperimentConfig:
    """Isotropic oscillator H = -Δ + |x|², by default in 2D with 10 modes (n ≤ 3).

    2D as the authors: T = 16 - H, samples from N(0, 4² I), a learnable envelope exp(-|x|/s_l) per mode
    (measured at 10k steps, seed 0: mean energy error 3.8e-3 and subspace distance 2.4e-3 with it,
    1.5e-2 and 1.8e-2 without); Adam 1e-3 with a cosine schedule over the whole run. Any ``operator.dim``
    and per-axis ``operator.omega`` work; ``shift`` and the sampler then follow :func:`_oscillator_operator`
    (docs/dimension-study.md). ``operator.laplacian="hutchinson"`` with ``operator.probes=k``: the
    unbiased stochastic Laplacian of :mod:`neuralsvd.autodiff`, for large d.
    """
    return ExperimentConfig(
        problem="oscillator", modes=10,
        operator=dict(dim=2, omega=1.0, scale=1.0, shift=None, sampler_std=None, sampler_bound=None,
                      laplacian="exact", probes=1, sampler_exp_scale=None, model_output="ratio"),
        model=ModelConfig(hidden=(128, 128, 128), activation="softplus", envelope=True, envelope_scale=10.0),
        train=TrainConfig(steps=10_000, batch_size=128, optimizer="adam", lr=1e-3, schedule="cosine"),
    )


register(
    Problem("hydrogen", "2D hydrogen atom H = -Δ - 1/|x| (default 9 modes, n ≤ 2; --modes 16 for n ≤ 3)",
            _hydrogen, _hydrogen_operator, prepare=_prepare_hydrogen),
    Problem("hydrogen-paper", "2D hydrogen with the authors' full recipe (16 modes, RMSProp 1e-4, 500k steps)",
            _hydrogen_paper, _hydrogen_operator),
    Problem("oscillator", "harmonic oscillator H = -Δ + Σ ω_i² x_i², any operator.dim (default 2D, 10 modes, n ≤ 3)",
            _oscillator, _oscillator_operator),
)
