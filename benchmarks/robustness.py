"""Robustness benchmark: library defaults on problems no preset was tuned on, scored against independent references.

Every run is what a newcomer writes (nothing else is set):

    op = Schrodinger(V, dim=d, shift=s, sampler=Gaussian(dim=d, std=σ))      # or the default sampler
    model = models.ParallelMLP(in_features=d, num_modes=L)                    # size "default"
    model = models.ParallelMLP(in_features=d, num_modes=L, hidden=(64, 64))   # size "small"
    result = fit(model, op, NestedLoRA(L), steps=STEPS, batch_size=256, seed=seed, progress=False)

(``neuralef``: ``NeuralEF(L)``; any other method name of :func:`neuralsvd.experiments.make_loss` works too;
``--fit key=value`` adds keyword arguments to ``fit``.) ``torch.manual_seed(seed)`` precedes the model's
construction, so a run is reproducible. Graphs use ``op.node_model(ParallelMLP(...))`` on the node
coordinates; the dense matrix uses ``models.Tabular(n, L)`` (one size only).

**Success** of a run: every learned level within 1% of its reference and every mode's ``‖f‖²/λ̂``
(``result.extras["norm_ratio"]``) in ``[0.5, 2]`` (losses without that diagnostic, e.g. NeuralEF: the level
criterion alone). Learned and reference levels are compared in sorted order (a lost mode shows up as a
missing level). The error of level ``l`` is ``|E_l - E_ref,l| / max(|E_ref,l|, spread/10)`` with
``spread = max E_ref - min E_ref`` over the ``L`` reference levels, so that a level near 0 is judged on the
spectrum's scale. A run's error is its worst level's. A run that raises (divergence) fails.

Suites: ``main`` (the benchmark) and ``holdout`` (other untuned problems of the same kinds, only for checking
that a change generalizes; never tune on it). ``--quick``: the quick problems, one seed, a small budget.

    python benchmarks/robustness.py --methods neuralsvd,neuralef --steps 4000 --seeds 0 1 2 3 4 \\
        --sizes default,small --jobs 2 --json docs/figures/robustness.json --plot docs/figures/robustness.png
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import multiprocessing
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import robustness_references as ref

import neuralsvd as nsvd
from neuralsvd.problems import make_loss

#: the step budget of the suite (see docs/robustness.md for why)
STEPS = 4000
BATCH_SIZE = 256
TOLERANCE = 0.01
NORM_RATIO_RANGE = (0.5, 2.0)
SIZES = {"default": None, "small": (64, 64)}  # ParallelMLP hidden widths (None: the library default)
#: --quick: problem -> (modes, steps), a budget at which the library defaults pass (tests/test_robustness_benchmark.py)
QUICK = {"anharmonic-1d": (3, 800), "aniso-1.7-2d": (2, 1500), "hydrogen-3d": (2, 1500), "dense-matrix": (4, 15000),
         "radius-graph": (3, 2000)}

# A potential is written once, for torch (the operator) and numpy (the references): x (n, d), m the module.
Formula = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: how to build the operator and model, and its independent reference."""

    name: str
    formula: str  # human-readable
    dim: int
    modes: int
    build_operator: Callable[[], Any]
    # reference(verify=False) -> (levels (L,), error bound (L,)), sorted as `ascending`; verify: finer grid, wider box
    reference: Callable[..., tuple[np.ndarray, np.ndarray]]
    how: str  # how the reference is computed
    setting: str = ""  # shift and sampler, as passed
    ascending: bool = True  # energies (ascending) or top eigenvalues (descending)
    model: str = "mlp"  # "mlp" (ParallelMLP on x), "nodes" (ParallelMLP on node features), "tabular"
    potential: Formula | None = None  # Schrödinger problems: V, for the consistency test
    axes: tuple[Formula, ...] = ()  # separable problems: the per-axis potentials the reference solves
    sizes: tuple[str, ...] = ("default", "small")


def _exact(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(levels, dtype=float), np.zeros(len(levels))


def _schrodinger(name: str, formula: str, potential: Formula, dim: int, modes: int, shift: float, std: float | None,
                 reference: Callable[..., tuple[np.ndarray, np.ndarray]], how: str,
                 axes: tuple[Formula, ...] = ()) -> Problem:
    def build():
        sampler = None if std is None else nsvd.sampling.Gaussian(dim=dim, std=std)
        return nsvd.operators.Schrodinger(lambda x: potential(x, torch), dim=dim, shift=shift, sampler=sampler)

    sampler = "default sampler" if std is None else f"Gaussian std {std:g}"
    return Problem(name, formula, dim, modes, build, reference, how, f"shift {shift:g}, {sampler}",
                   potential=potential, axes=axes)


def _fd1(axis: Formula, modes: int, half_width: float, center: float = 0.0,
         verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """1D FD levels; ``verify``: twice the points on a box 2 wider on each side (the verification)."""
    return ref.fd_levels_1d(lambda t: axis(t[:, None], np), modes, half_width + 2 * verify,
                            points=4000 * (1 + verify), center=center)


def _separable(axes: Sequence[tuple[np.ndarray, np.ndarray]], modes: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor sum of per-axis (levels, errors); the error bound adds the axes' largest bounds."""
    levels = ref.tensor_sum_levels([a for a, _ in axes], modes)
    return levels, np.full(modes, sum(float(e.max()) for _, e in axes))


def _fd2(potential: Formula, modes: int, half_width: float, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """2D FD levels; ``verify``: 1.5 times the points on a box 1.5 wider on each side (the verification)."""
    return ref.fd_levels_2d(lambda x: potential(x, np), modes, half_width + 1.5 * verify,
                            points=120 + 60 * verify)


def _oscillator(verify: bool, omegas: Sequence[float], modes: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed form; ``verify``: 1D FD per axis, tensor-summed."""
    if not verify:
        return _exact(ref.oscillator_levels(omegas, modes))
    return _separable([_fd1(_x2(0, w), modes, 8.0 / w ** 0.5) for w in omegas], modes)


def _radial(potential: Formula, dim: int, modes: int, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``-Δ + V(|x|)`` in 2D or 3D from radial FD (:func:`robustness_references.radial_levels`, a box of
    radius 80): angular momenta ``l = 0..2`` with their multiplicities (3D ``2l + 1``; 2D 1 for ``l = 0``,
    else 2); ``verify``: twice the points."""
    levels = []
    for ang in range(3):
        def v(t: np.ndarray) -> np.ndarray:
            return potential(np.stack([t] + [np.zeros_like(t)] * (dim - 1), 1), np)

        found = ref.radial_levels(v, dim, ang, modes, points=20000 * (1 + verify))
        levels += [e for e in found for _ in range(2 * ang + 1 if dim == 3 else 1 + (ang > 0))]
    return _exact(np.sort(levels)[:modes])


# ------------------------------------------------------------------ potentials (x (n, d), m = torch or numpy)

def _x2(i: int, w: float = 1.0) -> Formula:
    return lambda x, m: (w * x[:, i]) ** 2


def _dw(i: int, a: float) -> Formula:
    return lambda x, m: a * (x[:, i] ** 2 - 1) ** 2


def _sech2(i: int, depth: float) -> Formula:
    return lambda x, m: -depth / m.cosh(x[:, i]) ** 2


def _morse(i: int, depth: float, a: float) -> Formula:
    return lambda x, m: depth * (1 - m.exp(-a * x[:, i])) ** 2


def _sum(*terms: Formula) -> Formula:
    return lambda x, m: sum(t(x, m) for t in terms)


def _quadratic_form(matrix: np.ndarray) -> Formula:
    a = [[float(v) for v in row] for row in matrix]
    d = len(a)
    return lambda x, m: sum(a[i][j] * x[:, i] * x[:, j] for i in range(d) for j in range(d))


_COUPLED_4D = np.eye(4) + 0.3 * (np.eye(4, k=1) + np.eye(4, k=-1))

_ADW = lambda x, m: 3 * (x[:, 0] ** 2 - 1) ** 2 + 0.8 * x[:, 0]
_ANH = lambda x, m: x[:, 0] ** 2 + 0.1 * x[:, 0] ** 4
_CQ = lambda x, m: x[:, 0] ** 2 + 0.3 * x[:, 0] ** 3 + 0.1 * x[:, 0] ** 4
_QUARTIC = lambda i: (lambda x, m: x[:, i] ** 4)
_HYDROGEN = lambda x, m: -2.0 / m.sqrt((x**2).sum(1))
_HYDROGEN_2D = lambda x, m: -1.0 / m.sqrt((x**2).sum(1))
_COULOMB_TRAP = lambda x, m: -1.5 / m.sqrt((x**2).sum(1)) + 0.1 * (x**2).sum(1)
_COUPLED = lambda x, m: x[:, 0] ** 2 + x[:, 1] ** 2 + 0.8 * x[:, 0] * x[:, 1] + 0.2 * x[:, 0] ** 2 * x[:, 1] ** 2
_HENON = lambda x, m: (x[:, 0] ** 2 + x[:, 1] ** 2 + 0.5 * (x[:, 0] ** 2 * x[:, 1] - x[:, 1] ** 3 / 3)
                       + 0.05 * (x[:, 0] ** 2 + x[:, 1] ** 2) ** 2)
_SEXTIC = lambda x, m: x[:, 0] ** 2 + 0.05 * x[:, 0] ** 6
_COUPLED_B = lambda x, m: x[:, 0] ** 2 + 2 * x[:, 1] ** 2 - 0.6 * x[:, 0] * x[:, 1] + 0.1 * x[:, 0] ** 4


# ------------------------------------------------------------------ finite operators

def _gaussian_points(n: int, stds: Sequence[float], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(stds))) * np.asarray(stds)  # (n, d)


def _kernel_problem(name: str, kernel: str, gamma: float, stds: Sequence[float], n: int, modes: int,
                    seed: int) -> Problem:
    data = _gaussian_points(n, stds, seed)

    def build():
        k = {"rbf": nsvd.operators.kernels.RBF, "laplacian": nsvd.operators.kernels.Laplacian}[kernel](gamma)
        return nsvd.operators.KernelOperator(k, torch.as_tensor(data))

    def reference(verify: bool = False):
        diff = data[:, None, :] - data[None, :, :]
        dist = (diff**2).sum(-1) if kernel == "rbf" else np.abs(diff).sum(-1)
        return _exact(ref.top_eigenvalues(np.exp(-gamma * dist) / n, modes))

    return Problem(name, f"{kernel} kernel (γ={gamma:g}) on {n} points ~ N(0, diag{tuple(s**2 for s in stds)})",
                   len(stds), modes, build, reference, "numpy eigh of K / N (the empirical operator, exact)",
                   "data", ascending=False)


def _graph_points(n: int, seed: int, shape: str = "square") -> np.ndarray:
    """``n`` uniform points (n, 2): in the unit square, or in the annulus 0.5 ≤ |x| ≤ 1 (``"annulus"``)."""
    rng = np.random.default_rng(seed)
    if shape == "square":
        return rng.uniform(size=(n, 2))
    radius = np.sqrt(rng.uniform(0.25, 1.0, size=n))  # uniform in area
    angle = rng.uniform(0, 2 * np.pi, size=n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)


def _graph_adjacency(points: np.ndarray, radius: float) -> np.ndarray:
    dist2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    a = np.exp(-dist2 / radius**2) * (dist2 < (2 * radius) ** 2)
    np.fill_diagonal(a, 0.0)
    return a


def _graph_problem(name: str, n: int, radius: float, modes: int, seed: int, shape: str = "square") -> Problem:
    points = _graph_points(n, seed, shape)
    adjacency = _graph_adjacency(points, radius)

    def build():
        return nsvd.operators.GraphOperator(adjacency, features=torch.as_tensor(points, dtype=torch.float32))

    def reference(verify: bool = False):
        inv = 1 / np.sqrt(adjacency.sum(1))
        return _exact(ref.top_eigenvalues(inv[:, None] * adjacency * inv[None, :], modes))

    where = "[0,1]²" if shape == "square" else "the annulus 0.5 ≤ |x| ≤ 1"
    return Problem(name, f"Gaussian-weighted radius graph on {n} uniform points in {where} (r={radius:g})", 2, modes,
                   build, reference, "numpy eigh of D^-1/2 A D^-1/2", "node features = coordinates",
                   ascending=False, model="nodes")


def _dense_problem(name: str, n: int, top: Sequence[float], modes: int, seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    spectrum = np.concatenate([np.asarray(top, dtype=float), rng.uniform(-1.0, 1.0, size=n - len(top))])
    matrix = (q * spectrum) @ q.T
    matrix = (matrix + matrix.T) / 2

    def build():
        return nsvd.operators.DenseOperator(torch.as_tensor(matrix))

    return Problem(name, f"{n}×{n} symmetric, top eigenvalues {tuple(top)}, the rest uniform in [-1, 1]", 1, modes,
                   build, lambda verify=False: _exact(ref.top_eigenvalues(matrix, modes)), "numpy eigh", "Tabular model",
                   ascending=False, model="tabular", sizes=("default",))


# ------------------------------------------------------------------ the suites

def _main_suite() -> list[Problem]:
    s = _schrodinger
    dw, x1 = _dw(0, 4.0), _x2(1)
    return [
        s("double-well-2d", "4(x0²−1)² + x1²", _sum(dw, x1), 2, 4, 9.0, 2.0,
          lambda verify=False: _separable([_fd1(dw, 4, 6.0, verify=verify), _exact(ref.oscillator_levels([1.0], 4))], 4),
          "1D FD ⊕ oscillator", axes=(dw, x1)),
        s("asym-double-well-1d", "3(x²−1)² + 0.8x", _ADW, 1, 4, 14.0, 1.5, lambda verify=False: _fd1(_ADW, 4, 6.0, verify=verify), "1D FD"),
        s("quartic-2d", "x0⁴ + x1⁴", _sum(_QUARTIC(0), _QUARTIC(1)), 2, 4, 10.0, 1.5,
          lambda verify=False: _separable([_fd1(_QUARTIC(0), 4, 6.0, verify=verify)] * 2, 4), "1D FD ⊕ 1D FD", axes=(_QUARTIC(0), _QUARTIC(1))),
        s("anharmonic-1d", "x² + 0.1x⁴", _ANH, 1, 5, 13.0, None, lambda verify=False: _fd1(_ANH, 5, 8.0, verify=verify), "1D FD"),
        s("cubic-quartic-1d", "x² + 0.3x³ + 0.1x⁴", _CQ, 1, 4, 9.0, 2.0, lambda verify=False: _fd1(_CQ, 4, 8.0, verify=verify), "1D FD"),
        s("sech2-2d", "−12 sech²(x0) + x1²", _sum(_sech2(0, 12.0), x1), 2, 4, -1.0, 2.0,
          lambda verify=False: _separable([_fd1(_sech2(0, 12.0), 3, 12.0), _fd1(_x2(0), 4, 8.0)] if verify else
                                          [_exact(ref.poschl_teller_levels(3.0, 3)), _exact(ref.oscillator_levels([1.0], 4))], 4),
          "closed form (Pöschl–Teller λ=3 ⊕ oscillator)", axes=(_sech2(0, 12.0), x1)),
        s("poschl-teller-1d", "−20 sech²(x)", _sech2(0, 20.0), 1, 3, -2.0, 1.5,
          lambda verify=False: _fd1(_sech2(0, 20.0), 3, 12.0) if verify else _exact(ref.poschl_teller_levels(4.0, 3)),
          "closed form −(4−n)²"),
        s("morse-1d", "16(1−e^(−x))²", _morse(0, 16.0, 1.0), 1, 3, 15.0, 1.5,
          lambda verify=False: _fd1(_morse(0, 16.0, 1.0), 3, 7.0, 2.5) if verify else _exact(ref.morse_levels(16.0, 1.0, 3)),
          "closed form 16 − (3.5−n)²"),
        s("hydrogen-3d", "−2/|x| (3D)", _HYDROGEN, 3, 5, 0.0, 3.0,
          lambda verify=False: _radial(_HYDROGEN, 3, 5) if verify else _exact(ref.hydrogen3d_levels(2.0, 5)),
          "closed form −Z²/(4n²), n² states"),
        s("aniso-1.7-2d", "x0² + (1.7x1)²", _sum(_x2(0), _x2(1, 1.7)), 2, 3, 8.0, 2.0,
          lambda verify=False: _oscillator(verify, [1.0, 1.7], 3), "closed form Σ ω(2n+1)"),
        s("aniso-5-2d", "x0² + 25x1²", _sum(_x2(0), _x2(1, 5.0)), 2, 4, 14.0, 1.5,
          lambda verify=False: _oscillator(verify, [1.0, 5.0], 4), "closed form Σ ω(2n+1)"),
        s("coupled-4d", "xᵀAx, A = I + 0.3 (chain)", _quadratic_form(_COUPLED_4D), 4, 4, 7.5, None,
          lambda verify=False: _exact(ref.normal_mode_levels(_COUPLED_4D, 4)), "closed form via normal modes ω = √eig A"),
        s("coupled-2d", "x0² + x1² + 0.8x0x1 + 0.2x0²x1²", _COUPLED, 2, 4, 7.0, 2.0,
          lambda verify=False: _fd2(_COUPLED, 4, 7.0, verify=verify), "2D FD (eigsh)"),
        s("henon-heiles-2d", "x0² + x1² + 0.5(x0²x1 − x1³/3) + 0.05(x0²+x1²)²", _HENON, 2, 4, 8.0, 2.0,
          lambda verify=False: _fd2(_HENON, 4, 7.0, verify=verify), "2D FD (eigsh)"),
        _kernel_problem("rbf-kernel-2d", "rbf", 0.5, (1.0, 0.5), 1500, 4, seed=1),
        _graph_problem("radius-graph", 300, 0.25, 4, seed=2),
        _dense_problem("dense-matrix", 200, (5.0, 4.0, 3.2, 2.5, 2.0), 4, seed=3),
    ]


def _holdout_suite() -> list[Problem]:
    s = _schrodinger
    dw5, x1, x2 = _dw(0, 5.0), _x2(1), _x2(2, 1.5)
    pa, pb = _sech2(0, 6.0), _sech2(1, 6.0)
    return [
        s("double-well-3d", "5(x0²−1)² + x1² + 2.25x2²", _sum(dw5, x1, x2), 3, 4, 10.0, 2.0,
          lambda verify=False: _separable([_fd1(dw5, 4, 6.0, verify=verify), _exact(ref.oscillator_levels([1.0], 4)),
                              _exact(ref.oscillator_levels([1.5], 4))], 4), "1D FD ⊕ oscillators", axes=(dw5, x1, x2)),
        s("sextic-1d", "x² + 0.05x⁶", _SEXTIC, 1, 4, 11.0, 1.5, lambda verify=False: _fd1(_SEXTIC, 4, 6.0, verify=verify), "1D FD"),
        s("sech2-pair-2d", "−6 sech²(x0) − 6 sech²(x1)", _sum(pa, pb), 2, 3, -4.5, 2.0,
          lambda verify=False: _separable([_fd1(_sech2(0, 6.0), 2, 12.0) if verify else
                                           _exact(ref.poschl_teller_levels(2.0, 2))] * 2, 3),
          "closed form (Pöschl–Teller λ=2 ⊕ itself)", axes=(pa, pb)),
        s("aniso-3-2d", "x0² + 9x1²", _sum(_x2(0), _x2(1, 3.0)), 2, 3, 9.5, None,
          lambda verify=False: _oscillator(verify, [1.0, 3.0], 3), "closed form Σ ω(2n+1)"),
        s("coupled-2d-b", "x0² + 2x1² − 0.6x0x1 + 0.1x0⁴", _COUPLED_B, 2, 4, 8.0, 1.5,
          lambda verify=False: _fd2(_COUPLED_B, 4, 7.0, verify=verify), "2D FD (eigsh)"),
        s("morse-1d-b", "9(1−e^(−0.75x))²", _morse(0, 9.0, 0.75), 1, 3, 8.5, 2.0,
          lambda verify=False: _fd1(_morse(0, 9.0, 0.75), 3, 9.0, 3.0) if verify else _exact(ref.morse_levels(9.0, 0.75, 3)),
          "closed form 9 − 0.5625(4−n−½)²"),
        s("hydrogen-2d", "−1/|x| (2D)", _HYDROGEN_2D, 2, 4, 0.0, 4.0,
          lambda verify=False: _radial(_HYDROGEN_2D, 2, 4) if verify else _exact(ref.hydrogen2d_levels(1.0, 4)),
          "closed form −Z²/(2n+1)², 2n+1 states"),
        s("coulomb-trap-3d", "−1.5/|x| + 0.1|x|²", _COULOMB_TRAP, 3, 4, 1.2, 2.0,
          lambda verify=False: _radial(_COULOMB_TRAP, 3, 4, verify=verify), "radial FD, l ≤ 2"),
        _kernel_problem("laplace-kernel-1d", "laplacian", 1.0, (1.0,), 1500, 4, seed=4),
        _graph_problem("annulus-graph", 350, 0.25, 4, seed=5, shape="annulus"),
    ]


SUITES: dict[str, Callable[[], list[Problem]]] = {"main": _main_suite, "holdout": _holdout_suite}


def problems(suite: str = "main") -> dict[str, Problem]:
    """The suite's problems by name."""
    return {p.name: p for p in SUITES[suite]()}


# ------------------------------------------------------------------ one run

def make_model(problem: Problem, op: Any, size: str) -> torch.nn.Module:
    """The newcomer's model for ``problem`` at ``size`` (``"default"`` or ``"small"``)."""
    if problem.model == "tabular":
        return nsvd.models.Tabular(op.shape[0], problem.modes)
    kwargs = {} if SIZES[size] is None else {"hidden": SIZES[size]}
    net = nsvd.models.ParallelMLP(in_features=problem.dim, num_modes=problem.modes, **kwargs)
    return op.node_model(net) if problem.model == "nodes" else net


def make_method_loss(method: str, modes: int) -> Any:
    """``neuralsvd``: ``NestedLoRA(L)``; ``neuralef``: ``NeuralEF(L)`` (defaults); else ``make_loss``."""
    if method == "neuralsvd":
        return nsvd.NestedLoRA(modes)
    if method == "neuralef":
        return nsvd.NeuralEF(modes)
    return make_loss(method, modes)


def score(levels: Sequence[float], reference: Sequence[float], norm_ratio: Sequence[float] | None,
          ascending: bool = True) -> dict[str, Any]:
    """Score one run's levels (and per-mode norm ratios, in the same order) against the reference.

    Returns ``success``, ``max_error``, per-level ``errors`` and ``failures`` (one record per level that
    misses the tolerance or whose mode's norm ratio is outside :data:`NORM_RATIO_RANGE`)."""
    levels, reference = np.asarray(levels, dtype=float), np.asarray(reference, dtype=float)
    if levels.shape != reference.shape:
        raise ValueError(f"levels {levels.shape} and reference {reference.shape} must have the same shape (L,)")
    ratios = np.full(len(levels), np.nan) if norm_ratio is None else np.asarray(norm_ratio, dtype=float)
    order = np.argsort(levels if ascending else -levels, kind="stable")
    levels, ratios = levels[order], ratios[order]
    reference = np.sort(reference) if ascending else -np.sort(-reference)
    spread = float(reference.max() - reference.min())
    denominator = np.maximum(np.abs(reference), spread / 10)
    denominator[denominator == 0] = 1.0
    errors = np.abs(levels - reference) / denominator
    lo, hi = NORM_RATIO_RANGE
    failures = []
    for i, (e, r) in enumerate(zip(errors, ratios)):
        bad_error, bad_norm = not e <= TOLERANCE, not np.isnan(r) and not lo <= r <= hi
        if bad_error or bad_norm:
            failures.append({"level": i, "learned": float(levels[i]), "reference": float(reference[i]),
                             "error": float(e), "norm_ratio": None if np.isnan(r) else float(r),
                             "why": "+".join(w for w, b in (("error", bad_error), ("norm", bad_norm)) if b)})
    return {"success": not failures, "max_error": float(errors.max()), "errors": errors.tolist(),
            "failures": failures}


@dataclass(frozen=True)
class RunSpec:
    suite: str
    problem: str
    method: str
    size: str
    seed: int
    steps: int
    modes: int
    fit_kwargs: dict[str, Any] = field(default_factory=dict)
    reference: tuple[float, ...] = ()


def run_one(spec: RunSpec) -> dict[str, Any]:
    """One newcomer run, scored (a run that raises is a failure with its error message)."""
    problem = dataclasses.replace(problems(spec.suite)[spec.problem], modes=spec.modes)
    row: dict[str, Any] = {"suite": spec.suite, "problem": spec.problem, "method": spec.method, "size": spec.size,
                           "seed": spec.seed, "steps": spec.steps, "modes": spec.modes, "fit": spec.fit_kwargs,
                           "reference": list(spec.reference)}
    op = problem.build_operator()
    torch.manual_seed(spec.seed)
    model = make_model(problem, op, spec.size)
    loss = make_method_loss(spec.method, problem.modes)
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = nsvd.fit(model, op, loss, steps=spec.steps, batch_size=BATCH_SIZE, seed=spec.seed,
                              progress=False, **spec.fit_kwargs)
        except Exception as err:  # noqa: BLE001 - a failing run is a measured failure
            result, error = None, f"{type(err).__name__}: {err}"
    row["seconds"], row["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    row["warnings"] = [str(w.message) for w in caught if issubclass(w.category, (RuntimeWarning, UserWarning))]
    if result is None:
        return {**row, "status": "failed", "error": error, "success": False, "max_error": None, "levels": None,
                "norm_ratio": None, "stderr": None, "errors": None, "failures": []}
    levels = result.eigenvalues.tolist()
    ratio = result.extras.get("norm_ratio")
    stderr = None if result.eigenvalue_stderr is None else result.eigenvalue_stderr.tolist()
    return {**row, "status": "ok", "fit_status": result.status, "levels": levels, "norm_ratio": ratio,
            "stderr": stderr, "rescues": result.extras.get("rescues", []), **score(levels, spec.reference, ratio, problem.ascending)}


def _progress(row: dict[str, Any]) -> dict[str, Any]:
    err = "failed" if row["max_error"] is None else f"error {row['max_error']:.2e}"
    print(f"  {row['problem']} {row['method']} {row['size']} seed {row['seed']}: "
          f"{'ok' if row['success'] else 'FAIL'} ({err}, {row['cpu_seconds']:.0f} s CPU)", flush=True)
    return row


def _run_all(specs: list[RunSpec], jobs: int) -> list[dict[str, Any]]:
    """The runs' rows in order (here, or in ``jobs`` spawned one-thread workers), each announced when done."""
    if jobs == 1:  # one thread here too: two threads on shared cores are many times slower (benchmarks/threads.py)
        torch.set_num_threads(1)
        return [_progress(run_one(s)) for s in specs]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return [_progress(row) for row in pool.map(run_one, specs)]


# ------------------------------------------------------------------ tables and figure

def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, size): runs, successes, success rate, runs failed with a mode's norm ratio out of range (a
    lost or stalled mode), median worst-level error, median seconds (wall, CPU) per run."""
    out = []
    for key in dict.fromkeys((r["method"], r["size"]) for r in rows):
        group = [r for r in rows if (r["method"], r["size"]) == key]
        wins = sum(r["success"] for r in group)
        errors = [r["max_error"] if r["max_error"] is not None else float("inf") for r in group]
        lost = (sum(any("norm" in f["why"] for f in r["failures"]) for r in group)
                if any(r.get("norm_ratio") is not None for r in group) else None)  # None: no such diagnostic
        out.append({"method": key[0], "size": key[1], "runs": len(group), "successes": wins,
                    "success_rate": wins / len(group), "norm_failures": lost, "median_error": _median(errors),
                    "median_seconds": _median([r["seconds"] for r in group]),
                    "median_cpu_seconds": _median([r["cpu_seconds"] for r in group])})
    return out


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [("| method | model size | successes / runs | success rate | failed on a norm ratio | "
              "median error (worst level) | s / run (wall) | s / run (CPU) |"),
             "|---|---|---|---|---|---|---|---|"]
    for s in summary(rows):
        lines.append(f"| {s['method']} | {s['size']} | {s['successes']}/{s['runs']} | {s['success_rate']:.0%} | "
                     f"{'–' if s['norm_failures'] is None else s['norm_failures']} | "
                     f"{s['median_error']:.2e} | {s['median_seconds']:.1f} | {s['median_cpu_seconds']:.1f} |")
    return "\n".join(lines)


def problem_table(rows: Sequence[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys((r["method"], r["size"]) for r in rows))
    lines = ["| problem | " + " | ".join(f"{m} ({s})" for m, s in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in dict.fromkeys(r["problem"] for r in rows):
        cells = []
        for key in keys:
            group = [r for r in rows if r["problem"] == name and (r["method"], r["size"]) == key]
            cells.append(f"{sum(r['success'] for r in group)}/{len(group)}" if group else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failure_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per failed run: which levels failed and how."""
    out = []
    for r in rows:
        if r["success"]:
            continue
        if r["status"] != "ok":
            out.append(f"{r['problem']} {r['method']} {r['size']} seed {r['seed']}: {r['status']} ({r['error']})")
            continue
        parts = [f"level {f['level']} {f['learned']:.4g} vs {f['reference']:.4g} (err {f['error']:.2g}"
                 + (f", ratio {f['norm_ratio']:.2g}" if f["norm_ratio"] is not None else "") + ")"
                 for f in r["failures"]]
        out.append(f"{r['problem']} {r['method']} {r['size']} seed {r['seed']}: " + "; ".join(parts)
                   + (" [warned]" if r["warnings"] else ""))
    return out


def plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> None:
    """Per problem: success fraction per (method, size) (top) and each run's worst-level error (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["problem"] for r in rows))
    keys = list(dict.fromkeys((r["method"], r["size"]) for r in rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.75 * len(names) + 2), 8), sharex=True)
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        xs, fractions = [], []
        for i, name in enumerate(names):
            group = [r for r in rows if r["problem"] == name and (r["method"], r["size"]) == key]
            if group:
                xs.append(i + (k - (len(keys) - 1) / 2) * width)
                fractions.append(sum(r["success"] for r in group) / len(group))
        bars = top.bar(xs, fractions, width, label=f"{key[0]} ({key[1]})")
        errs = [(i + (k - (len(keys) - 1) / 2) * width, r["max_error"] if r["max_error"] is not None else 10.0)
                for i, name in enumerate(names) for r in rows if r["problem"] == name and (r["method"], r["size"]) == key]
        bottom.scatter([x for x, _ in errs], [max(e, 1e-5) for _, e in errs], s=12, color=bars.patches[0].get_facecolor()
                       if bars.patches else None)
    top.set_ylabel("success fraction")
    top.set_ylim(0, 1.05)
    top.legend(fontsize=8, ncol=min(4, len(keys)))
    top.set_title(title, fontsize=10)
    bottom.axhline(TOLERANCE, color="k", lw=0.8, ls="--", label="tolerance")
    bottom.legend(fontsize=8, loc="lower right")
    bottom.set_yscale("log")
    bottom.set_ylabel("worst-level relative error")
    bottom.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ command line

def _fit_kwargs(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"--fit expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _verify(suite: dict[str, Problem]) -> int:
    """Each grid reference against a finer grid on a wider box: the largest relative change."""
    print("| problem | reference | levels | error bound (Richardson) | relative change vs the check (FD: finer grid, wider box; closed form: FD) |")
    print("|---|---|---|---|---|")
    for name, p in suite.items():
        levels, bound = p.reference()
        finer, _ = p.reference(verify=True)
        change = np.abs(finer - levels).max() / np.abs(levels).max()
        print(f"| {name} | {p.how} | {np.array2string(levels, precision=5)} | {bound.max():.1e} | {change:.1e} |")
    return 0


def _report(rows: Sequence[dict[str, Any]]) -> None:
    print(summary_table(rows))
    print()
    print(problem_table(rows))
    print()
    for line in failure_lines(rows):
        print(line)


def _merge(paths: Sequence[str], json_out: str | None, plot_out: str | None) -> int:
    """Tables, JSON and figure of the runs of several --json files (e.g. one per seed; merged files too). A run
    of a later file replaces the same run (suite, problem, method, size, seed, steps, fit) of an earlier one,
    in its place, so a partial rerun splices into a whole sweep."""
    payloads = [json.loads(Path(p).read_text()) for p in paths]
    by_run: dict[str, dict[str, Any]] = {}
    for row in (r for p in payloads for r in p["runs"]):
        by_run[json.dumps([row.get(k) for k in ("suite", "problem", "method", "size", "seed", "steps", "fit")])] = row
    rows = list(by_run.values())
    _report(rows)
    commands = [c for p in payloads for c in (p["command"] if isinstance(p["command"], list) else [p["command"]])]
    print("merged from:\n" + "\n".join(f"command: {c}" for c in commands))
    merged = {**payloads[0], "command": commands, "wall_seconds": sum(p["wall_seconds"] for p in payloads),
              "problems": {k: v for p in payloads for k, v in p["problems"].items()},
              "summary": summary(rows), "runs": rows}
    if json_out:
        Path(json_out).write_text(json.dumps(merged, indent=1) + "\n")
    if plot_out:
        seeds = sorted({r["seed"] for r in rows})
        steps = sorted({r["steps"] for r in rows})
        plot(rows, plot_out, f"{payloads[0]['suite']} suite, {'/'.join(map(str, steps))} steps, seeds {seeds}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="neuralsvd,neuralef")
    parser.add_argument("--steps", type=int, default=None, help=f"default {STEPS} (--quick: per problem, see QUICK)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 3 4 (0 with --quick)")
    parser.add_argument("--sizes", default="default,small")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--suite", choices=sorted(SUITES), default="main")
    parser.add_argument("--problems", default=None, help="comma-separated names (default: the whole suite)")
    parser.add_argument("--fit", nargs="*", default=[], metavar="KEY=VALUE", help="extra keyword arguments of fit")
    parser.add_argument("--quick", action="store_true", help=f"problems {','.join(QUICK)}, fewer modes, one seed, small budget")
    parser.add_argument("--load", nargs="+", default=None, metavar="JSON",
                        help="run nothing: merge the runs of these --json files into the tables, --json and --plot")
    parser.add_argument("--verify", action="store_true",
                        help="run nothing: each reference against its check (FD: finer grid, wider box; closed form: FD)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)

    if args.load:
        return _merge(args.load, args.json, args.plot)
    suite = problems(args.suite)
    if args.verify:
        return _verify(suite)
    names = (args.problems.split(",") if args.problems else list(QUICK) if args.quick else list(suite))
    unknown = [n for n in names if n not in suite]
    if unknown:
        raise SystemExit(f"unknown problem(s) {unknown} in suite {args.suite!r}; valid: {', '.join(suite)}")
    sizes = args.sizes.split(",")
    if any(s not in SIZES for s in sizes):
        raise SystemExit(f"--sizes must be among {', '.join(SIZES)}, got {args.sizes!r}")
    # (modes, steps) per problem: the suite's modes and budget, or the quick plan; --steps overrides the budget
    plan = {n: (QUICK[n] if args.quick and n in QUICK else (suite[n].modes, STEPS)) for n in names}
    plan = {n: (modes, args.steps or steps) for n, (modes, steps) in plan.items()}
    seeds = args.seeds if args.seeds is not None else [0] if args.quick else [0, 1, 2, 3, 4]
    methods = args.methods.split(",")
    for m in methods:
        make_method_loss(m, 1)  # fail early on an unknown method
    fit_kwargs = _fit_kwargs(args.fit)

    references = {}
    for name in names:
        modes = plan[name][0]
        levels, error = (a[:modes] for a in suite[name].reference())  # references list the lowest levels first
        references[name] = {"levels": levels.tolist(), "error_bound": error.tolist()}
        print(f"reference {name}: {np.array2string(levels, precision=6)} (± {error.max():.1e}; {suite[name].how})",
              flush=True)
    specs = [RunSpec(args.suite, name, method, size, seed, plan[name][1], plan[name][0], fit_kwargs,
                     tuple(references[name]["levels"]))
             for name in names for method in methods for size in sizes if size in suite[name].sizes
             for seed in seeds]
    start = time.perf_counter()
    rows = _run_all(specs, args.jobs)
    wall = time.perf_counter() - start

    command = "python benchmarks/robustness.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    _report(rows)
    print(f"\n{len(rows)} runs in {wall / 60:.1f} min wall ({args.jobs} jobs)")
    print(f"command: {command}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": command, "suite": args.suite, "batch_size": BATCH_SIZE,
                   "tolerance": TOLERANCE, "norm_ratio_range": NORM_RATIO_RANGE, "fit": fit_kwargs,
                   "torch": torch.__version__, "wall_seconds": wall,
                   "problems": {n: {"formula": suite[n].formula, "dim": suite[n].dim, "modes": plan[n][0], "steps": plan[n][1],
                                    "setting": suite[n].setting, "reference_method": suite[n].how,
                                    **references[n]} for n in names},
                   "summary": summary(rows), "runs": rows}
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        budgets = sorted({steps for _, steps in plan.values()})
        plot(rows, args.plot, f"{args.suite} suite, {'/'.join(map(str, budgets))} steps, seeds {seeds}"
             + (f", fit {fit_kwargs}" if fit_kwargs else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
