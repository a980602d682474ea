"""Estimators with scikit-learn conventions (``fit`` / ``transform``; needs ``scikit-learn``).

Each estimator builds an operator from the training data, learns its top modes with
:class:`~neuralsvd.NestedLoRA` and networks (so ``transform`` extends to new points), and exposes the
spectrum as a fitted attribute:

* :class:`NeuralEigenmap`: eigenfunctions of a kernel integral operator on the empirical measure of
  ``X`` (:class:`~neuralsvd.operators.KernelOperator`); with ``center=True`` (default) the kernel is
  centered as in ``sklearn.decomposition.KernelPCA``, whose ``eigenvalues_`` are ``N`` times ours.
* :class:`NeuralSpectralEmbedding`: Laplacian eigenmaps of the k-nearest-neighbour graph of ``X``, as
  ``sklearn.manifold.SpectralEmbedding(affinity="nearest_neighbors")`` (same graph), plus out-of-sample
  ``transform``.
* :class:`NeuralCCA`: the canonical dependence kernel of two views (nonlinear CCA;
  :class:`~neuralsvd.operators.PairedSamples`), with ``fit(X, Y)``, ``transform(X)``, ``transform_y(Y)``.
* :class:`NeuralKoopman`: Koopman / transfer-operator singular functions from trajectories
  (:class:`~neuralsvd.operators.TrajectoryOperator`), in deeptime's shape (``fit(trajectories)``,
  ``fetch_model()``, ``singular_values_``, ``timescales_``, ``score``); its own conventions are on the class.

``transform`` returns the learned functions normalized in ``L²`` of the training measure (unit mean
square over the training points), modes leading first, as float64 arrays. Inputs are standardized per
feature inside the models. ``random_state`` seeds the initialization and the sampling (the global torch
RNG is left untouched).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor, nn

from ._validation import check_positive_int
from .training.koopman import KoopmanModel, koopman_model
from .losses import NestedLoRA
from .models import ParallelMLP, Standardize
from .operators.base import Operator
from .operators.graph import GraphOperator
from .operators.kernel import KernelOperator
from .operators.kernels import Centered, make_kernel
from .operators.paired import PairedSamples
from .training.fit import FitResult, fit
from .operators.trajectory import Trajectories, TrajectoryData, TrajectoryOperator

__all__ = ["KoopmanModel", "NeuralCCA", "NeuralEigenmap", "NeuralKoopman", "NeuralSpectralEmbedding"]

#: the schedule the estimators' documented comparisons were measured with (fit's default is not measured here)
SCHEDULE = "cosine"


class _NeuralSpectral(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Shared training settings and the fit plumbing of the estimators below."""

    def _network(self, data: Tensor, num_modes: int) -> nn.Module:
        """Standardization + ``num_modes`` disjoint MLPs on the features of ``data (N, d)``."""
        return nn.Sequential(
            Standardize(data),
            ParallelMLP(data.shape[1], num_modes, hidden=self.hidden, activation=self.activation),
        )

    def _check_common(self, n_samples: int) -> None:
        for name in ("n_components", "steps", "batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_components >= n_samples:
            raise ValueError(f"n_components={self.n_components} must be below n_samples={n_samples}")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be at least 2 (the loss splits it in halves), got {self.batch_size}"
            )

    def _train(self, make_model: Any, operator: Operator, num_modes: int) -> FitResult:
        """Build the model(s) with ``make_model()`` under the estimator's seed and train them."""
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        with torch.random.fork_rng(devices=[]):  # fit seeds torch's global RNG: restore it afterwards
            torch.manual_seed(seed)
            result = fit(make_model(), operator, NestedLoRA(num_modes, nesting=self.nesting),
                         steps=int(self.steps), batch_size=int(self.batch_size), lr=self.lr, seed=seed,
                         schedule=SCHEDULE, device=self.device, dtype=torch.float32, progress=self.verbose)
        for module in result.decomposition.modules(result.model):
            module.double()  # trained in float32, evaluated in float64: transform is batch-independent
        return result

    @staticmethod
    def _evaluate(function: Any, x: np.ndarray) -> np.ndarray:
        return function(torch.tensor(x, dtype=torch.float64)).cpu().numpy()

    @property
    def _n_features_out(self) -> int:
        return self.n_components


class NeuralEigenmap(_NeuralSpectral):
    """Kernel eigenfunctions learned by networks: a kernel PCA that generalizes out of sample.

    The operator is ``(Tf)(x) = mean_j k_c(x, x_j) f(x_j)`` on the training points, ``k_c`` the kernel
    centered in feature space (``center=True``, as KernelPCA) or the kernel itself.

    Args:
        n_components: number of eigenfunctions ``L``.
        kernel: ``"rbf"``, ``"laplacian"``, ``"poly"``, ``"cosine"`` or a callable
            ``k(x (n, d), y (m, d)) -> (n, m)`` on torch tensors.
        gamma, degree, coef0: kernel parameters as in scikit-learn (``gamma=None``: ``1/n_features``).
        center: center the kernel (KernelPCA's convention).
        hidden, activation: hidden widths and activation of each mode's MLP (sine networks fit the oscillatory
            higher modes much faster than softplus ones).
        steps, batch_size, lr, nesting: training (see :func:`neuralsvd.fit`, :class:`~neuralsvd.NestedLoRA`).
        random_state, device, verbose: seed (int, RandomState or None), torch device, progress bar.

    Attributes:
        eigenvalues_: ``(L,)`` eigenvalues of the operator, descending (``KernelPCA.eigenvalues_ / N``).
        result_: the :class:`~neuralsvd.FitResult`.
        n_features_in_: number of features seen in ``fit``.
    """

    def __init__(
        self,
        n_components: int = 8,
        *,
        kernel: Any = "rbf",
        gamma: float | None = None,
        degree: int = 3,
        coef0: float = 1.0,
        center: bool = True,
        hidden: Sequence[int] = (64, 64),
        activation: str = "sin",
        steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        nesting: str = "sequential",
        random_state: Any = None,
        device: str = "cpu",
        verbose: bool = False,
    ):
        self.n_components, self.kernel, self.gamma, self.degree = n_components, kernel, gamma, degree
        self.coef0, self.center, self.hidden, self.activation = coef0, center, hidden, activation
        self.steps, self.batch_size, self.lr, self.nesting = steps, batch_size, lr, nesting
        self.random_state, self.device, self.verbose = random_state, device, verbose

    def _kernel(self, n_features: int) -> Any:
        if callable(self.kernel):
            return self.kernel
        gamma = 1.0 / n_features if self.gamma is None else self.gamma
        params = {
            "rbf": {"gamma": gamma},
            "laplacian": {"gamma": gamma},
            "poly": {"degree": self.degree, "gamma": gamma, "coef0": self.coef0},
            "cosine": {},
        }
        if self.kernel not in params:
            raise ValueError(f"unknown kernel {self.kernel!r}; valid: {', '.join(params)} or a callable")
        return make_kernel(self.kernel, **params[self.kernel])

    def fit(self, X: Any, y: Any = None) -> NeuralEigenmap:
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        self._check_common(X.shape[0])
        data = torch.tensor(X, dtype=torch.float64)
        kernel = self._kernel(X.shape[1])
        operator = KernelOperator(Centered(kernel, data) if self.center else kernel, data)
        self.result_ = self._train(
            lambda: self._network(data.float(), self.n_components), operator, self.n_components
        )
        self.eigenvalues_ = self.result_.eigenvalues.double().numpy()
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Eigenfunctions at ``X (n, d)``: ``(n, n_components)``, unit mean square on the training data."""
        check_is_fitted(self)
        return self._evaluate(
            self.result_.eigenfunctions, validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        )


class NeuralSpectralEmbedding(_NeuralSpectral):
    """Laplacian eigenmaps of the symmetrized k-nearest-neighbour graph of ``X``, learned by a network on
    the features (out-of-sample ``transform``).

    The graph is scikit-learn's ``SpectralEmbedding(affinity="nearest_neighbors")`` graph,
    ``A = ½(K + Kᵀ)`` with ``K = kneighbors_graph(X, n_neighbors, include_self=True)``; the operator is
    ``M = D^{-1/2} A D^{-1/2}`` (:class:`~neuralsvd.operators.GraphOperator`). Its trivial top mode
    (``∝ sqrt(degree)``, eigenvalue 1) is learned and dropped, as ``SpectralEmbedding`` drops it.
    ``SpectralEmbedding.embedding_[:, l]`` is proportional to ``transform(X)[:, l] / sqrt(degree)``.

    Args:
        n_components: embedding dimension ``L``.
        n_neighbors: neighbours per point (``None``: ``max(N // 10, 1)``, scikit-learn's default).
        shift: learn ``M - shift·I`` (:class:`~neuralsvd.operators.GraphOperator`): the smoothest modes of a
            k-NN graph have eigenvalues just below 1, and relative to ``1 - shift`` their gaps are large
            (faster training); the ``n_components + 1`` top eigenvalues must exceed it.
        hidden, activation, steps, batch_size, lr, nesting, random_state, device, verbose: as
            :class:`NeuralEigenmap`.

    Attributes:
        eigenvalues_: ``(L,)`` eigenvalues of ``M`` after the trivial one (``1 -`` normalized Laplacian
            eigenvalues), descending.
        embedding_: ``(N, L)`` the embedding of the training points.
        affinity_matrix_: the sparse graph ``A``.
        result_, n_features_in_: as :class:`NeuralEigenmap`.
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        n_neighbors: int | None = None,
        shift: float = 0.9,
        hidden: Sequence[int] = (64, 64),
        activation: str = "sin",
        steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        nesting: str = "sequential",
        random_state: Any = None,
        device: str = "cpu",
        verbose: bool = False,
    ):
        self.n_components, self.n_neighbors, self.shift = n_components, n_neighbors, shift
        self.hidden = hidden
        self.activation, self.steps, self.batch_size, self.lr = activation, steps, batch_size, lr
        self.nesting, self.random_state, self.device, self.verbose = nesting, random_state, device, verbose

    def fit(self, X: Any, y: Any = None) -> NeuralSpectralEmbedding:
        from sklearn.neighbors import kneighbors_graph

        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        self._check_common(X.shape[0])
        n_neighbors = max(X.shape[0] // 10, 1) if self.n_neighbors is None else self.n_neighbors
        knn = kneighbors_graph(X, n_neighbors, include_self=True)
        self.affinity_matrix_ = 0.5 * (knn + knn.T)
        data = torch.tensor(X, dtype=torch.float64)
        operator = GraphOperator(self.affinity_matrix_, features=data, shift=self.shift)
        num_modes = self.n_components + 1
        self.result_ = self._train(
            lambda: operator.node_model(self._network(data.float(), num_modes), residual=False), operator, num_modes
        )
        self.eigenvalues_ = self.result_.eigenvalues[1:].double().numpy()
        self.embedding_ = self.transform(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The embedding of points ``X (n, d)`` (new or training): ``(n, n_components)``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        on_features = dataclasses.replace(self.result_, model=self.result_.model.net)  # the network itself
        return self._evaluate(on_features.eigenfunctions, X)[:, 1:]


class NeuralCCA(_NeuralSpectral):
    """Nonlinear CCA: the top singular functions of the conditional expectation between two views.

    Learns the canonical dependence kernel ``p(x, y) / (p(x) p(y)) = 1 + Σ_l σ_l φ_l(x) ψ_l(y)`` of the
    empirical joint distribution of the rows of ``X`` and ``Y``; the constant mode is pinned
    (:class:`~neuralsvd.operators.ConstantFirst`) and not returned. For jointly Gaussian views the top
    functions are linear CCA's canonical variates and ``σ_l`` its canonical correlations (then their
    products: higher Hermite modes).

    Args:
        n_components: number of non-constant modes ``L``.
        hidden, activation, steps, batch_size, lr, nesting, random_state, device, verbose: as
            :class:`NeuralEigenmap`.

    Attributes:
        singular_values_: ``(L,)`` descending, in ``[0, 1]``: the correlation of ``φ_l(X)`` and ``ψ_l(Y)``.
        result_, n_features_in_: as :class:`NeuralEigenmap`; ``n_features_y_`` for ``Y``.
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        hidden: Sequence[int] = (64, 64),
        activation: str = "sin",
        steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        nesting: str = "sequential",
        random_state: Any = None,
        device: str = "cpu",
        verbose: bool = False,
    ):
        self.n_components, self.hidden, self.activation, self.steps = n_components, hidden, activation, steps
        self.batch_size, self.lr, self.nesting, self.random_state = batch_size, lr, nesting, random_state
        self.device, self.verbose = device, verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def fit(self, X: Any, Y: Any) -> NeuralCCA:
        X, Y = validate_data(self, X, Y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True,
                             ensure_min_samples=2)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        self._check_common(X.shape[0])
        self.n_features_y_ = Y.shape[1]
        x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y, dtype=torch.float64)
        k = self.n_components
        operator = PairedSamples(x, y)
        self.result_ = self._train(
            lambda: operator.pinned_models(self._network(x.float(), k), self._network(y.float(), k)),
            operator,
            k + 1,
        )
        self.singular_values_ = self.result_.singular_values[1:].double().numpy()
        return self

    def transform(self, X: Any, Y: Any = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Left functions ``φ_1..φ_L`` at ``X``, ``(n, L)``; with ``Y``, also ``transform_y(Y)`` (as CCA)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        left = self._evaluate(self.result_.left_functions, X)[:, 1:]
        return left if Y is None else (left, self.transform_y(Y))

    def transform_y(self, Y: Any) -> np.ndarray:
        """Right functions ``ψ_1..ψ_L`` at ``Y``, ``(n, L)``."""
        check_is_fitted(self)
        from sklearn.utils import check_array

        Y = check_array(Y, dtype=[np.float64, np.float32], ensure_2d=False)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        if Y.shape[1] != self.n_features_y_:
            raise ValueError(
                f"Y has {Y.shape[1]} features, but {type(self).__name__} was fitted with {self.n_features_y_}"
            )
        return self._evaluate(self.result_.right_functions, Y)[:, 1:]


class NeuralKoopman(BaseEstimator):
    """Koopman (transfer-operator) singular functions learned from trajectories with NestedLoRA.

    A drop-in for deeptime's ``VAMPNet``/``TICA`` workflow: ``NeuralKoopman(n_components=L, lagtime=τ)
    .fit(trajectories).fetch_model()``. The operator is :class:`~neuralsvd.operators.TrajectoryOperator`
    (its docstring holds the conventions); the constant mode (``σ_0 = 1``) is pinned and never returned.

    Args:
        n_components: ``L``, modes beyond the constant.
        lagtime: ``τ`` in steps.
        reversible: symmetrized estimate with one network per mode (equilibrium data), or the general SVD
            with left and right networks.
        hidden, activation: widths and activation of each mode's MLP (inputs standardized per feature).
        steps, batch_size, lr, nesting: training (:func:`neuralsvd.fit`; ``batch_size`` counts lagged pairs,
            an even number when reversible).
        seed, device, progress: seed of initialization and sampling (the global torch RNG is restored),
            torch device, progress bar.
        validation_fraction: hold out the last fraction of every trajectory (in time); the VAMP-2 score there
            is ``validation_score_``. 0: train on everything.
        max_pairs: the data statistics after training (normalization, ``eigenvalues_``, scores) use every
            lagged pair, or a random ``max_pairs`` of them if there are more.

    Attributes (after ``fit``):
        singular_values_: ``(L,)`` descending, without the constant. timescales_: ``(L,)`` ``-τ / ln σ`` in
            steps. eigenvalues_: ``(L+1,)`` complex Koopman eigenvalues in the learned span (constant
            included; :mod:`neuralsvd.training.koopman`). validation_score_: held-out VAMP-2 or None.
        model_: the :class:`~neuralsvd.training.koopman.KoopmanModel` (also ``fetch_model()``). result_: the
            :class:`~neuralsvd.FitResult` (modes with the constant first). n_features_in_: ``d``.
    """

    def __init__(
        self,
        n_components: int = 2,
        lagtime: int = 1,
        *,
        reversible: bool = True,
        hidden: Sequence[int] = (64, 64),
        activation: str = "sin",
        steps: int = 3000,
        batch_size: int = 512,
        lr: float = 1e-3,
        nesting: str = "sequential",
        seed: int = 0,
        device: str = "cpu",
        progress: bool = False,
        validation_fraction: float = 0.0,
        max_pairs: int = 1_000_000,
    ):
        self.n_components, self.lagtime, self.reversible = n_components, lagtime, reversible
        self.hidden, self.activation, self.steps, self.batch_size = hidden, activation, steps, batch_size
        self.lr, self.nesting, self.seed, self.device, self.progress = lr, nesting, seed, device, progress
        self.validation_fraction, self.max_pairs = validation_fraction, max_pairs

    def _network(self, scale_data: Tensor) -> nn.Module:
        return nn.Sequential(
            Standardize(scale_data),
            ParallelMLP(scale_data.shape[1], self.n_components, hidden=self.hidden, activation=self.activation),
        )

    def fit(self, trajectories: TrajectoryData, y: Any = None) -> NeuralKoopman:
        """Learn from ``trajectories``: ``(T, d)``, ``(N, T, d)``, a list of arrays, or ``.npy`` path(s)."""
        for name in ("n_components", "steps", "batch_size", "max_pairs"):
            check_positive_int(name, getattr(self, name))
        data = Trajectories(trajectories)
        data.check_lag(self.lagtime)
        held_out = None
        if self.validation_fraction:
            data, held_out = data.split(self.validation_fraction, self.lagtime)
        operator = TrajectoryOperator(data, self.lagtime, reversible=self.reversible)
        if self.n_components + 1 > operator.num_pairs:
            raise ValueError(f"n_components={self.n_components} needs more than {operator.num_pairs} lagged pairs")
        gen = torch.Generator().manual_seed(int(self.seed))
        sample = operator.lagged_pairs(torch.randint(operator.num_pairs, (min(operator.num_pairs, 100_000),),
                                                     generator=gen), dtype=torch.float32)
        scale = torch.cat(sample, 0)  # frames (both ends of the pairs) for the input standardization
        with torch.random.fork_rng(devices=[]):  # fit seeds torch's global RNG: restore it afterwards
            torch.manual_seed(int(self.seed))
            if self.reversible:
                model: Any = operator.pinned_model(self._network(scale))
            else:
                model = operator.pinned_models(self._network(scale), self._network(scale))
            self.result_ = fit(model, operator, NestedLoRA(self.n_components + 1, nesting=self.nesting),
                               steps=int(self.steps), batch_size=int(self.batch_size), lr=self.lr, seed=int(self.seed),
                               schedule=SCHEDULE, device=self.device, dtype=torch.float32, progress=self.progress)
        for module in self.result_.decomposition.modules(self.result_.model):
            module.double().cpu()  # trained in float32, evaluated in float64: transform is batch-independent
        self.n_features_in_ = data.dim
        self.model_ = koopman_model(self.result_, data, self.lagtime, self.max_pairs, int(self.seed))
        self.singular_values_ = self.model_.singular_values_
        self.eigenvalues_ = self.model_.eigenvalues_
        self.validation_score_ = None if held_out is None else self.model_.score(held_out, max_pairs=self.max_pairs)
        return self

    def fetch_model(self) -> KoopmanModel:
        """The fitted :class:`~neuralsvd.training.koopman.KoopmanModel`."""
        check_is_fitted(self)
        return self.model_

    @property
    def timescales_(self) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.timescales_

    def transform(self, X: Any, lagged: bool = False) -> np.ndarray:
        """The learned singular functions at ``X (n, d)``: ``(n, L)`` (see :class:`~neuralsvd.training.koopman.KoopmanModel`)."""
        check_is_fitted(self)
        return self.model_.transform(X, lagged=lagged)

    def score(self, trajectories: TrajectoryData, y: Any = None, r: int = 2) -> float:
        """VAMP-``r`` on ``trajectories`` (held-out data): the constant's +1 included, as deeptime, so at most
        ``L + 1`` (:func:`~neuralsvd.training.koopman.vamp_score`)."""
        check_is_fitted(self)
        return self.model_.score(trajectories, r=r, max_pairs=self.max_pairs, seed=int(self.seed))

    def eigenvalues(self, trajectories: TrajectoryData | None = None) -> np.ndarray:
        """Koopman eigenvalues in the learned span (see :meth:`~neuralsvd.training.koopman.KoopmanModel.eigenvalues`)."""
        check_is_fitted(self)
        return self.model_.eigenvalues(trajectories, max_pairs=self.max_pairs, seed=int(self.seed))
