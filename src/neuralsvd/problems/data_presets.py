"""Problems defined by data: kernel integral operators, graphs and paired samples (registered into
:data:`~neuralsvd.problems.registry.PROBLEMS`).

* ``rbf-gaussian``: RBF kernel under a Gaussian measure, closed form (GPML §4.3.1).
* ``cycle-graph``: normalized adjacency of the cycle graph (Laplacian eigenmaps), closed form.
* ``gaussian-pairs``: the conditional expectation of a bivariate Gaussian (canonical dependence kernel),
  closed form (``σ_k = ρ^k``, Hermite polynomials), with the constant mode pinned.
* ``digits-views``: two views of scikit-learn's digits (top and bottom 4 rows of each 8×8 image), scored
  by cross-view retrieval against scikit-learn's CCA of the same size (needs scikit-learn).

Problems whose functions are not plotted on a 1D/2D grid, or that report extra ``metrics.json`` fields,
set :attr:`Problem.plot` and :attr:`Problem.extra_metrics`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import operators
from ..models import Tabular
from ..operators.base import Operator
from ..operators.paired import cross_view_retrieval
from ..training.result import FitResult
from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from .registry import Problem, make_model, register

__all__ = ["DATA_PROBLEMS", "digits_views", "two_view_retrieval"]


# --- rbf-gaussian ---------------------------------------------------------------------------------------


def _rbf_gaussian() -> ExperimentConfig:
    """1D, 8 modes: eigenvalues 0.39 · 0.61^k; sine MLPs (oscillatory Hermite–Gaussian eigenfunctions)."""
    return ExperimentConfig(
        problem="rbf-gaussian",
        modes=8,
        operator={"dim": 1, "gamma": 2.0, "std": 1.0},
        model=ModelConfig(hidden=(64, 64), activation="sin"),
        train=TrainConfig(steps=12_000, batch_size=512, optimizer="adam", lr=1e-3, schedule="cosine"),
    )


def _rbf_gaussian_operator(p: dict[str, Any]) -> Operator:
    return operators.GaussianRBF(dim=p["dim"], gamma=p["gamma"], std=p["std"])


# --- cycle-graph ------------------------------------------------------------------------------------------


def _cycle_graph() -> ExperimentConfig:
    """n = 64 nodes, 9 modes (the constant and four cos/sin pairs: complete eigenspaces, so that the subspace
    metrics are defined); i.i.d. node batches, one value per node."""
    return ExperimentConfig(
        problem="cycle-graph",
        modes=9,
        operator={"n": 64, "normalized": True},
        train=TrainConfig(steps=3000, batch_size=256, optimizer="adam", lr=3e-2, schedule="cosine"),
    )


def _cycle_graph_operator(p: dict[str, Any]) -> Operator:
    return operators.CycleGraph(p["n"], normalized=p["normalized"])


def _tabular(config: ExperimentConfig, operator: Operator) -> nn.Module:
    return Tabular(operator.num_nodes, config.modes)


# --- gaussian-pairs ----------------------------------------------------------------------------------------


def _gaussian_pairs() -> ExperimentConfig:
    """ρ = 0.8, the constant and 6 modes (σ = 0.8^k); pairs from the proposal N(0, 2² Σ), sine MLPs."""
    return ExperimentConfig(
        problem="gaussian-pairs",
        modes=7,
        operator={"rho": 0.8, "proposal_scale": 2.0},
        model=ModelConfig(hidden=(64, 64), activation="sin"),
        train=TrainConfig(steps=6000, batch_size=512, optimizer="adam", lr=1e-3, schedule="cosine"),
    )


def _gaussian_pairs_operator(p: dict[str, Any]) -> Operator:
    return operators.GaussianPairs.bivariate(p["rho"], proposal_scale=p["proposal_scale"])


def _pinned_pair(config: ExperimentConfig, operator: Operator) -> tuple[nn.Module, nn.Module]:
    """``(left, right)``: the problem's networks for the non-constant modes behind a pinned constant."""
    if config.modes < 2:
        raise ConfigError(
            f"paired problems need modes >= 2 (the pinned constant and at least one more), got {config.modes}"
        )
    rest = dataclasses.replace(config, modes=config.modes - 1)
    return operator.pinned_models(make_model(rest, operator.dim_x), make_model(rest, operator.dim_y))


# --- digits-views ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def digits_views(train_size: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """scikit-learn's digits (1797 images 8×8, pixels 0..16 scaled to [0, 1]) as two views, the top 4 rows
    (``x``, 32 pixels) and the bottom 4 rows (``y``), split at random into ``train_size`` training pairs
    and the rest for testing. Keys: ``x_train, y_train, labels_train, x_test, y_test, labels_test``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ConfigError("digits-views needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float64)  # (N, 8, 8)
    labels = torch.tensor(digits.target)
    if not 2 <= train_size < images.shape[0] - 1:
        raise ConfigError(f"train_size must be in [2, {images.shape[0] - 2}], got {train_size}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(images.shape[0]))
    x, y = images[:, :4].reshape(-1, 32), images[:, 4:].reshape(-1, 32)
    train, test = order[:train_size], order[train_size:]
    return {
        "x_train": x[train],
        "y_train": y[train],
        "labels_train": labels[train],
        "x_test": x[test],
        "y_test": y[test],
        "labels_test": labels[test],
    }


def _digits_views() -> ExperimentConfig:
    """The constant and 8 modes per view (sine MLPs); 1000 training pairs, 797 test pairs."""
    return ExperimentConfig(
        problem="digits-views",
        modes=9,
        operator={"train_size": 1000, "split_seed": 0},
        model=ModelConfig(hidden=(64, 64), activation="sin"),
        train=TrainConfig(steps=3000, batch_size=256, optimizer="adam", lr=1e-3, schedule="cosine"),
    )


def _digits_views_operator(p: dict[str, Any]) -> Operator:
    views = digits_views(p["train_size"], p["split_seed"])
    return operators.PairedSamples(views["x_train"], views["y_train"])


def two_view_retrieval(result: FitResult, views: dict[str, torch.Tensor], k: int = 10) -> dict[str, float]:
    """Cross-view retrieval on the test pairs of ``views`` (:func:`digits_views`): ours and scikit-learn's
    CCA with as many components as our non-constant modes, fitted on the same training pairs.

    Each method embeds the test ``x`` and ``y`` views into ``K`` unit-variance coordinates with a dependence
    weight each (ours: singular functions ``φ_l, ψ_l`` and singular values ``σ_l``, the constant dropped;
    CCA: canonical variates standardized on the training set and their training correlations) and
    ranks gallery items by ``Σ_l w_l a_l(query) b_l(item)`` (for ours, the learned density ratio
    ``p(x, y)/(p(x)p(y)) - 1``); an item is relevant if it shows the same digit. Returns precision@k and
    mAP for x→y and y→x queries and their means, for both methods.
    """
    from sklearn.cross_decomposition import CCA

    num = result.singular_values.shape[0] - 1
    labels = views["labels_test"]
    ours = (
        result.left_functions(views["x_test"])[:, 1:],
        result.right_functions(views["y_test"])[:, 1:],
        result.singular_values[1:],
    )
    cca = CCA(n_components=num, max_iter=2000).fit(views["x_train"].numpy(), views["y_train"].numpy())
    train_x, train_y = cca.transform(views["x_train"].numpy(), views["y_train"].numpy())
    mean_x, std_x, mean_y, std_y = train_x.mean(0), train_x.std(0), train_y.mean(0), train_y.std(0)
    test_x, test_y = cca.transform(views["x_test"].numpy(), views["y_test"].numpy())
    correlations = ((train_x - mean_x) * (train_y - mean_y)).mean(0) / (std_x * std_y)
    theirs = (
        torch.tensor((test_x - mean_x) / std_x),
        torch.tensor((test_y - mean_y) / std_y),
        torch.tensor(correlations),
    )
    out: dict[str, float] = {}
    for name, (a, b, w) in (("", ours), ("cca_", theirs)):
        forward = cross_view_retrieval(a, b, labels, labels, k, w)
        backward = cross_view_retrieval(b, a, labels, labels, k, w)
        for key in ("precision_at_k", "mean_average_precision"):
            metric = key.replace("_k", f"_{k}")
            out[f"{name}{metric}_x_to_y"], out[f"{name}{metric}_y_to_x"] = forward[key], backward[key]
            out[f"{name}{metric}"] = 0.5 * (forward[key] + backward[key])
    out["cca_correlations"] = correlations.tolist()
    return out


def _digits_metrics(result: FitResult, config: ExperimentConfig) -> dict[str, Any]:
    p = config.operator
    return two_view_retrieval(result, digits_views(p["train_size"], p["split_seed"]))


def _plot_digits(result: FitResult, config: ExperimentConfig, path: Path) -> None:
    from ..plotting.data import plot_two_view_embedding

    p = config.operator
    views = digits_views(p["train_size"], p["split_seed"])
    plot_two_view_embedding(result, views["x_test"], views["y_test"], views["labels_test"], path=path)


def _plot_nodes(result: FitResult, config: ExperimentConfig, path: Path) -> None:
    from ..plotting.data import plot_node_functions

    plot_node_functions(result, path=path)


DATA_PROBLEMS: dict[str, Problem] = {  # also in the registry, see the end of the module
    p.name: p
    for p in (
        Problem(
            "rbf-gaussian",
            "RBF kernel operator under a Gaussian measure (closed form, GPML §4.3.1; 8 modes)",
            _rbf_gaussian,
            _rbf_gaussian_operator,
        ),
        Problem(
            "cycle-graph",
            "normalized adjacency of the 64-node cycle graph (closed form; 9 modes, Tabular)",
            _cycle_graph,
            _cycle_graph_operator,
            _tabular,
            plot=_plot_nodes,
        ),
        Problem(
            "gaussian-pairs",
            "SVD of a bivariate Gaussian's dependence, ρ = 0.8 (σ_k = ρ^k; constant + 6 modes)",
            _gaussian_pairs,
            _gaussian_pairs_operator,
            _pinned_pair,
        ),
        Problem(
            "digits-views",
            "two views of sklearn digits (top/bottom halves): retrieval vs CCA (constant + 8 modes)",
            _digits_views,
            _digits_views_operator,
            _pinned_pair,
            extra_metrics=_digits_metrics,
            plot=_plot_digits,
        ),
    )
}

register(*DATA_PROBLEMS.values())
