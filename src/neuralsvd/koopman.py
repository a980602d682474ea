r"""What is read from learned Koopman singular functions: VAMP scores, implied timescales, and eigenvalues of
the (possibly non-normal) Koopman operator in the learned span.

Conventions follow deeptime. **VAMP-r** of features ``f`` (instantaneous, on ``x_t``) and ``g``
(time-lagged, on ``x_{t+τ}``), each ``(n, L)`` over the pairs of some data: with the features made mean-free
on that data, ``C00 = E[f fᵀ]``, ``C11 = E[g gᵀ]``, ``C01 = E[f gᵀ]``,
``VAMP-r = ‖C00^{-1/2} C01 C11^{-1/2}‖_r^r + 1``, the ``+1`` being the constant function's ``σ_0 = 1``
(so VAMP-2 of ``L`` features is at most ``L + 1``). It scores the learned spans (any invertible mixing
of the features gives the same score).

**Eigenvalues.** Koopman eigenfunctions ``K h = λ h`` with ``|λ|`` large lie in the range of ``K``, spanned by
its leading left singular functions; with ``ψ = [1, f_1..f_L]`` evaluated on the pairs, the least-squares
Koopman matrix in that span is ``C00⁺ C01`` (``C`` here the raw, not mean-free, moments of ``ψ``), and its
eigenvalues estimate those of ``K`` (an extended dynamic mode decomposition on the learned dictionary).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .artifacts import Eigenfunctions
from .dynamics import implied_timescales
from .operators.trajectory import Trajectories
from .result import FitResult

__all__ = ["KoopmanModel", "koopman_matrix", "koopman_model", "lagged_frames", "sorted_eigenvalues", "vamp_score"]


def _numpy(x: Any) -> np.ndarray:
    """A tensor or array-like as a float64 numpy array."""
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def _inv_sqrt(c: np.ndarray, epsilon: float) -> np.ndarray:
    """``C^{-1/2}`` on the eigen-directions of ``C`` above ``epsilon`` (deeptime's ``spd_inv_sqrt``)."""
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    keep = w > epsilon
    return (v[:, keep] / np.sqrt(w[keep])) @ v[:, keep].T


def vamp_score(f: Any, g: Any, r: int = 2, epsilon: float = 1e-10) -> float:
    """VAMP-``r`` (module docstring; ``+1`` for the constant included) of ``f (n, L)`` at ``x_t`` and
    ``g (n, L)`` at ``x_{t+τ}`` (numpy or torch)."""
    f, g = _numpy(f), _numpy(g)
    if f.ndim != 2 or f.shape[0] != g.shape[0] or f.shape[0] < 2:
        raise ValueError(f"vamp_score needs f (n, L) and g (n, L') on the same n >= 2 pairs, got {f.shape}, {g.shape}")
    f, g = f - f.mean(0), g - g.mean(0)
    n = f.shape[0]
    k = _inv_sqrt(f.T @ f / n, epsilon) @ (f.T @ g / n) @ _inv_sqrt(g.T @ g / n, epsilon)
    s = np.linalg.svd(k, compute_uv=False)
    return float((s**r).sum() + 1.0)


def koopman_matrix(f: Tensor | np.ndarray, f_lagged: Tensor | np.ndarray, rcond: float = 1e-10) -> np.ndarray:
    """The least-squares Koopman matrix ``C00⁺ C01`` ``(L+1, L+1)`` of the dictionary ``[1, f]`` from its values
    ``f (n, L)`` at ``x_t`` and ``f_lagged (n, L)`` at ``x_{t+τ}`` (module docstring)."""
    f, f_lagged = _numpy(f), _numpy(f_lagged)
    ones = np.ones((f.shape[0], 1))
    psi0, psi1 = np.hstack([ones, f]), np.hstack([ones, f_lagged])
    n = f.shape[0]
    return np.linalg.pinv(psi0.T @ psi0 / n, rcond=rcond, hermitian=True) @ (psi0.T @ psi1 / n)


class KoopmanModel:
    """Learned Koopman singular functions as a deeptime-style model; also a plain callable
    ``X (n, d) numpy -> (n, L) numpy`` (:meth:`transform`), e.g. for deeptime's
    ``VAMP(lagtime, observable_transform=model)``. Build one with :func:`koopman_model`.

    The functions exclude the constant, come slowest first, and are standardized (zero mean, unit variance)
    on the training data: left functions on instantaneous frames (:meth:`transform`), right functions on
    time-lagged frames (``transform(X, lagged=True)``); a reversible model has one set for both.

    Attributes:
        singular_values, singular_values_: ``(L,)`` descending, the constant's 1 excluded.
        lagtime: ``τ`` in steps. timescales_: ``(L,)`` implied timescales ``-τ / ln σ`` in steps.
        eigenvalues_: ``(L+1,)`` complex Koopman eigenvalues in the learned span (the constant's 1
            included; module docstring), from the training data, by decreasing modulus.
        reversible: whether left and right functions are one set.
    """

    def __init__(self, left: Any, right: Any, singular_values: np.ndarray, lagtime: int,
                 left_stats: tuple[np.ndarray, np.ndarray], right_stats: tuple[np.ndarray, np.ndarray],
                 eigenvalues: np.ndarray):
        self._left, self._right = left, right
        self.singular_values_ = np.asarray(singular_values, dtype=np.float64)
        self.lagtime = int(lagtime)
        self._stats = {False: left_stats, True: right_stats}
        self.eigenvalues_ = eigenvalues

    @property
    def reversible(self) -> bool:
        return self._right is self._left

    @property
    def singular_values(self) -> np.ndarray:
        return self.singular_values_

    @property
    def timescales_(self) -> np.ndarray:
        return implied_timescales(self.singular_values_, self.lagtime)

    def timescales(self, k: int | None = None, lagtime: int | None = None) -> np.ndarray:
        """deeptime's form: the first ``k`` implied timescales (in steps) at ``lagtime`` (default the model's)."""
        return implied_timescales(self.singular_values_, lagtime or self.lagtime)[:k]

    def _raw(self, x: Any, lagged: bool) -> np.ndarray:
        """The functions before standardization, ``(n, L)``."""
        module = self._right if lagged else self._left
        t = x.detach().double() if isinstance(x, Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))
        if t.ndim == 1:
            t = t.unsqueeze(1)
        with torch.no_grad():
            out = torch.cat([module(t[i : i + 65536]) for i in range(0, t.shape[0], 65536)], 0)
        return _numpy(out)

    def transform(self, X: Any, lagged: bool = False) -> np.ndarray:
        """The singular functions at ``X (n, d)``: ``(n, L)``, standardized (class docstring); ``lagged``: the
        right functions."""
        mean, std = self._stats[bool(lagged)]
        return (self._raw(X, bool(lagged)) - mean) / std

    def __call__(self, X: Any) -> np.ndarray:
        return self.transform(X)

    def score(self, trajectories: Any, r: int = 2, max_pairs: int = 2_000_000, seed: int = 0) -> float:
        """VAMP-``r`` of the learned functions on ``trajectories`` (held-out data; :func:`vamp_score`: the
        constant's +1 included, at most ``L + 1``), from all its lagged pairs (a random ``max_pairs`` of them
        if there are more)."""
        x, y = lagged_frames(trajectories, self.lagtime, max_pairs, seed)
        return vamp_score(self.transform(x), self.transform(y, lagged=True), r=r)

    def eigenvalues(self, trajectories: Any = None, max_pairs: int = 2_000_000, seed: int = 0) -> np.ndarray:
        """Koopman eigenvalues in the span of ``[1, left functions]`` (module docstring), ``(L+1,)`` complex, by
        decreasing modulus: from ``trajectories`` if given, else those of the training data (``eigenvalues_``)."""
        if trajectories is None:
            return self.eigenvalues_
        x, y = lagged_frames(trajectories, self.lagtime, max_pairs, seed)
        return sorted_eigenvalues(koopman_matrix(self.transform(x), self.transform(y)))


class _WithoutConstant(nn.Module):
    """The normalized learned functions of a pinned-constant result without the constant: ``(n, L)``."""

    def __init__(self, result: FitResult, right: bool):
        super().__init__()
        self.functions = Eigenfunctions(result, right)
        # trajectory operators map model outputs to functions as they are: drop the operator (and with it a
        # reference to the training data), so that the model pickles small
        self.functions.operator = None

    def forward(self, x: Tensor) -> Tensor:
        return self.functions(x)[:, 1:]


def lagged_frames(trajectories: Any, lag: int, max_pairs: int = 2_000_000, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(x_t, x_{t+lag})``, each ``(n, d)``, of every lagged pair of ``trajectories`` (any input of
    :class:`~neuralsvd.operators.Trajectories`), or of a random ``max_pairs`` of them if there are more."""
    data = Trajectories(trajectories)
    data.check_lag(lag)
    total = data.num_pairs(lag)
    index = (np.arange(total) if total <= max_pairs
             else np.sort(np.random.default_rng(seed).choice(total, max_pairs, replace=False)))
    return data.pairs(index, lag)


def koopman_model(result: FitResult, trajectories: Any, lag: int, max_pairs: int = 1_000_000,
                  seed: int = 0) -> KoopmanModel:
    """The :class:`KoopmanModel` of a fit whose mode 0 is the pinned constant (a reversible EVD result, or an
    SVD result), standardized and with ``eigenvalues_`` from the lagged pairs of ``trajectories`` (the
    training data; a random ``max_pairs`` of them if there are more)."""
    left = _WithoutConstant(result, right=False)
    right = _WithoutConstant(result, right=True) if result.is_svd else left
    singular_values = result.singular_values[1:].double().cpu().numpy()
    num = singular_values.shape[0]
    unit = (np.zeros(num), np.ones(num))
    raw = KoopmanModel(left, right, singular_values, lag, unit, unit, np.array([]))
    x, y = lagged_frames(trajectories, lag, max_pairs, seed)
    fx, gy = raw.transform(x), raw.transform(y, lagged=True)
    if raw.reversible:
        both = np.concatenate([fx, gy], 0)
        left_stats = right_stats = (both.mean(0), both.std(0))
    else:
        left_stats, right_stats = (fx.mean(0), fx.std(0)), (gy.mean(0), gy.std(0))
    mean, std = left_stats
    fy = gy if raw.reversible else raw.transform(y)  # left functions at the lagged frames
    eigenvalues = sorted_eigenvalues(koopman_matrix((fx - mean) / std, (fy - mean) / std))
    return KoopmanModel(left, right, singular_values, lag, left_stats, right_stats, eigenvalues)


def sorted_eigenvalues(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``matrix`` by decreasing modulus (complex)."""
    values = np.linalg.eigvals(matrix).astype(np.complex128)
    return values[np.argsort(-np.abs(values), kind="stable")]
