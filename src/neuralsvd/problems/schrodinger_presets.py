"""The ``schrodinger`` problem: ``H = -kinetic Δ + V`` for a potential given on the command line.

``operator.potential`` is an expression in ``x0..x{d-1}`` and ``r`` (grammar: :mod:`neuralsvd.numerics.potential_expr`)
or ``module:callable`` (imported). Settings left at ``"auto"`` are chosen before the operator is built
(:func:`_prepare`, recorded in config.json and under ``auto_choices`` in metrics.json) from a coarse
finite-difference solve on a box that holds the wanted modes (d ≤ 3):

- ``shift = E_{L-1} + max(E_{L-1} - E_0, kinetic / extent²)``: every wanted mode gets a positive
  ``T``-eigenvalue, the lowest at least twice the highest's margin (``extent``: how far the modes reach
  along an axis, :func:`neuralsvd.numerics.reference_grid.auto_box`);
- ``sampler_std = 2 extent`` (a Gaussian ``N(0, σ² I)``), ``model.envelope_scale = 2.5 sampler_std``. When
  the ground state alone (its own coarse solve) reaches less than :data:`CORE_RATIO` of that extent, as
  near a Coulomb singularity, the sampler is an equal mixture of ``N(0, extent_0² I)`` and the wide
  Gaussian, so the tight state is sampled where it lives.

With ``operator.reference`` ``"grid"`` (``"auto"``: for d ≤ 2) the run also solves the problem on three
grids (:mod:`neuralsvd.numerics.reference_grid`) and metrics.json gets ``reference_*`` fields: the energies, their
estimated error and the learned results measured against them; the figure draws the learned
eigenfunctions next to the reference's.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import torch

from .. import operators
from ..numerics.potential_expr import check_bounded_below, check_finite, load_potential
from ..numerics.reference_grid import MAX_DIM, GridReference, auto_box, solve_reference
from ..operators.base import Operator
from ..training.evaluation import evaluate
from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from .registry import Problem, config_sampler, register

__all__ = ["DEFAULT_POTENTIAL", "REFERENCES", "REFERENCE_POINTS"]

DEFAULT_POTENTIAL = "x0**2 + 2.25*x1**2"
#: values of ``operator.reference``
REFERENCES = ("auto", "grid", "none")
#: the automatic sampler adds a component for the ground state when its extent is below this fraction of
#: the modes' (3D hydrogen: 0.22; smooth wells and oscillators of the robustness suite: 0.41–0.65)
CORE_RATIO = 1 / 3
#: grid points per axis of the reference's middle grid (it also solves on half and twice as many)
REFERENCE_POINTS = {1: 800, 2: 128, 3: 24}
#: points at which the potential must be finite: this many sampler draws
FINITE_CHECK_POINTS = 4096
_AUTO = "auto"


def _default() -> ExperimentConfig:
    """An anisotropic oscillator, 7 modes (energies 2.5, 4.5, 5.5, 6.5, 7.5, 8.5, 8.5); Adam 1e-3 with a
    cosine schedule, an envelope per mode, as the ``oscillator`` preset."""
    return ExperimentConfig(
        problem="schrodinger", modes=7,
        operator={"potential": DEFAULT_POTENTIAL, "dim": 2, "kinetic": 1.0, "scale": 1.0, "shift": _AUTO,
                  "sampler_std": _AUTO, "sampler_bound": None, "sampler_exp_scale": None, "laplacian": "exact",
                  "model_output": "ratio", "reference": _AUTO, "reference_points": None, "auto_choices": None,
                  # no cusp factor: the automatic sampler's core component answers a Coulomb singularity,
                  # and the factor on top of it measured worse (docs/convergence-study.md §15)
                  "cusps": None},
        model=ModelConfig(hidden=(128, 128, 128), activation="softplus", envelope=True, envelope_scale=_AUTO),
        train=TrainConfig(steps=10_000, batch_size=128, optimizer="adam", lr=1e-3, schedule="cosine"),
    )


def _dim(p: dict[str, Any]) -> int:
    dim = p.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"operator.dim must be a positive integer, got {dim!r}")
    return dim


def _checked_potential(p: dict[str, Any]) -> Any:
    """The potential of ``p``, rejected if it looks unbounded below."""
    dim = _dim(p)
    potential = load_potential(p.get("potential"), dim)
    check_bounded_below(potential, dim)
    return potential


def _round_up(value: float, digits: int = 3) -> float:
    """``value`` rounded up (towards +∞) to ``digits`` significant digits."""
    if value == 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)
    return round(math.ceil(value / step) * step, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def _prepare(config: ExperimentConfig) -> None:
    """Replace ``"auto"`` shift, sampler_std and model.envelope_scale (module docstring), in place."""
    p = config.operator
    auto = [k for k in ("shift", "sampler_std") if p.get(k) == _AUTO]
    auto_envelope = config.model.envelope_scale == _AUTO
    if not (auto or auto_envelope):
        return
    dim = _dim(p)
    potential = _checked_potential(p)
    if dim > MAX_DIM:
        names = ", ".join([f"operator.{k}" for k in auto] + ["model.envelope_scale"] * auto_envelope)
        raise ConfigError(f"the automatic {names} come from a grid solve, available for dim ≤ {MAX_DIM}; "
                          f"set them for dim = {dim}")
    coarse, extent = auto_box(potential, dim, config.modes, p["kinetic"])
    e, top = coarse.energies, config.modes - 1
    where = (f"a coarse grid solve ({coarse.points}^{dim} points on [-{coarse.half_width:.3g}, "
             f"{coarse.half_width:.3g}]^{dim}): E_0 = {e[0]:.4g}, E_{top} = {e[top]:.4g}, extent {extent:.3g}")
    choices = dict(p.get("auto_choices") or {})
    if "shift" in auto:
        p["shift"] = _round_up(float(e[top] + max(e[top] - e[0], p["kinetic"] / extent**2)))
        choices["shift"] = f"{p['shift']:g} = E_{top} + max(E_{top} - E_0, kinetic/extent²) from {where}"
    if "sampler_std" in auto:
        p["sampler_std"] = _round_up(2 * extent, 2)
        choices["sampler_std"] = f"{p['sampler_std']:g} = 2 extent from {where}"
        _, core = auto_box(potential, dim, 1, p["kinetic"])
        if core < CORE_RATIO * extent:  # a ground state much tighter than the rest (e.g. a Coulomb cusp)
            p["sampler_std"] = (_round_up(core, 2), p["sampler_std"])
            choices["sampler_std"] = (f"{p['sampler_std']} = (the ground state's own extent {core:.3g}, below "
                                      f"{CORE_RATIO:.2g} extent; 2 extent) from {where}: an equal mixture")
    if auto_envelope:
        stds = p.get("sampler_std")
        widest = max(stds) if isinstance(stds, (tuple, list)) else stds if stds is not None else 2 * extent
        config.model.envelope_scale = _round_up(2.5 * widest, 2)
        choices["envelope_scale"] = f"{config.model.envelope_scale:g} = 2.5 × the widest sampler_std"
    p["auto_choices"] = choices
    for key, text in choices.items():
        print(f"schrodinger: {key} = {text}")


def _operator(p: dict[str, Any]) -> Operator:
    for key in ("shift", "sampler_std"):
        if p.get(key) == _AUTO:
            raise ConfigError(f"operator.{key}='auto' is chosen by the schrodinger problem's prepare step: build "
                              "the operator with make_operator(config)")
    dim = _dim(p)
    _wants_reference(p)  # a bad choice fails before training
    potential = _checked_potential(p)
    sampler = config_sampler(dim, p)
    x = sampler.sample(FINITE_CHECK_POINTS, torch.Generator().manual_seed(0), torch.float64)  # (n, d)
    check_finite(potential, x, f"{FINITE_CHECK_POINTS} sampler points")
    return operators.Schrodinger(potential, dim, kinetic=p["kinetic"], scale=p["scale"], shift=p["shift"],
                                 sampler=sampler, laplacian=p["laplacian"], model_output=p["model_output"],
                                 cusps=p.get("cusps"))


def _wants_reference(p: dict[str, Any]) -> bool:
    choice = p.get("reference", _AUTO)
    if choice not in REFERENCES:
        raise ConfigError(f"unknown operator.reference {choice!r}; valid: {', '.join(REFERENCES)}")
    dim = _dim(p)
    points = p.get("reference_points")
    if points is not None and (isinstance(points, bool) or not isinstance(points, int) or points < 4 or points % 4):
        raise ConfigError(f"operator.reference_points must be a positive multiple of 4 (or None), got {points!r}")
    if choice == "grid" and dim > MAX_DIM:
        raise ConfigError(f"the grid reference solves dim ≤ {MAX_DIM}, got dim = {dim}; use --reference none")
    return choice == "grid" or (choice == _AUTO and dim <= 2)


@functools.lru_cache(maxsize=2)
def _solve(key: str, modes: int) -> GridReference:
    """The grid reference for the operator settings ``key`` (JSON), cached for the metrics and the figure."""
    p = json.loads(key)
    dim = _dim(p)
    points = p.get("reference_points") or REFERENCE_POINTS[dim]
    potential = load_potential(p["potential"], dim)
    box, _ = auto_box(potential, dim, modes, p["kinetic"])
    return GridReference(solve_reference(potential, dim, box.half_width, points, modes, p["kinetic"]))


def _reference(config: ExperimentConfig) -> GridReference | None:
    """The grid reference, or None when not wanted or when it fails (the reason is printed: a trained run
    still writes its outputs)."""
    if not _wants_reference(config.operator):
        return None
    try:  # one mode more: evaluate() then sees whether the last level is cut
        return _solve(json.dumps(config.operator, sort_keys=True), config.modes + 1)
    except ValueError as err:
        print(f"schrodinger: no grid reference: {err}")
        return None


#: fields of :func:`neuralsvd.evaluate` reported against the reference, as ``reference_<field>``
_AGAINST_REFERENCE = ("eigenvalue_relative_error", "mean_eigenvalue_relative_error", "max_eigenvalue_relative_error",
                      "angle_distance", "subspace_distance_avg", "subspace_distance_all", "subspace_distance_blocks",
                      "blocks")


def _metrics(result: Any, config: ExperimentConfig) -> dict[str, Any]:
    p = config.operator
    out: dict[str, Any] = {"potential": str(p["potential"]), "shift": result.operator.shift,
                           "auto_choices": p.get("auto_choices"), "reference": None}
    ref = _reference(config)
    if ref is None:
        return out
    L = config.modes
    report = evaluate(result, operator=ref, quadrature=ref.quadrature())
    sol = ref.solution
    out.update({
        "reference": "finite differences, Dirichlet box, three grids + Richardson",
        "reference_grid": ref.describe(),
        "reference_eigenvalues": report["exact_eigenvalues"],
        "reference_error_estimate": sol.error_estimate[:L].tolist(),
        "reference_eigenvalues_finest_grid": sol.energies[:L].tolist(),
        **{f"reference_{k}": report[k] for k in _AGAINST_REFERENCE},
    })
    return out


def _plot(result: Any, config: ExperimentConfig, path: Any) -> None:
    """Learned eigenfunctions next to the grid reference's (aligned in its degenerate blocks) for d ≤ 2,
    else the generic figure."""
    from matplotlib.text import Text

    from ..plotting import spectra as plotting

    ref = _reference(config)
    if ref is None or ref.dim > 2:  # the generic figure (and its treatment of d > 2)
        plotting.plot_eigenfunctions(result, path=path)
        return
    fig = plotting.plot_eigenfunctions(result, operator=ref)
    for text in fig.findobj(Text):
        text.set_text(text.get_text().replace("exact", "reference"))
    fig.suptitle(f"V = {config.operator['potential']}: learned eigenfunctions (aligned to the grid reference in "
                 "degenerate blocks); titles: learned / reference energy", fontsize=9)
    fig.savefig(path, dpi=plotting.DPI, format="png")


register(
    Problem("schrodinger", f"H = -Δ + V for your potential: --set \"operator.potential={DEFAULT_POTENTIAL}\" "
                           "(x0.., r; or module:callable); grid reference for d ≤ 2",
            _default, _operator, extra_metrics=_metrics, plot=_plot, prepare=_prepare),
)
