"""Kernel functions for :class:`~neuralsvd.operators.KernelOperator`.

A kernel is any callable ``k(x (n, d), y (m, d)) -> (n, m)`` that is symmetric (``k(x, y) = k(y, x)ᵀ``);
the classes below are such callables, with scikit-learn's parameter names (``gamma``, ``degree``,
``coef0``) so that ``RBF(gamma)`` is ``sklearn.metrics.pairwise.rbf_kernel(..., gamma=gamma)``. Only
positive semi-definite kernels have a non-negative spectrum, and only positive eigenvalues are learnable.
Outputs follow the dtype and device of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._validation import check_positive_int

__all__ = ["KERNELS", "RBF", "Centered", "Cosine", "Kernel", "Laplacian", "Polynomial", "make_kernel"]

Kernel = Callable[[Tensor, Tensor], Tensor]


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
        raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
    return float(gamma)


def _squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``|x_i - y_j|²``, ``(n, m)``, clamped at 0 against cancellation."""
    return ((x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2 * x @ y.T).clamp_min(0)


class RBF:
    r"""Gaussian kernel $k(x, y) = \exp(-\gamma |x - y|^2)$ (length scale $\ell = 1/\sqrt{2\gamma}$)."""

    def __init__(self, gamma: float = 1.0):
        self.gamma = _check_gamma(gamma)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.exp(-self.gamma * _squared_distances(x, y))

    def __repr__(self) -> str:
        return f"RBF(gamma={self.gamma})"


class Laplacian:
    r"""Laplacian kernel $k(x, y) = \exp(-\gamma |x - y|_1)$ (scikit-learn's ``laplacian_kernel``)."""

    def __init__(self, gamma: float = 1.0):
        self.gamma = _check_gamma(gamma)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.exp(-self.gamma * torch.cdist(x, y, p=1))

    def __repr__(self) -> str:
        return f"Laplacian(gamma={self.gamma})"


class Polynomial:
    r"""Polynomial kernel $k(x, y) = (\gamma\, x\cdot y + c_0)^{d}$ (PSD for $c_0 \ge 0$)."""

    def __init__(self, degree: int = 3, gamma: float = 1.0, coef0: float = 1.0):
        check_positive_int("degree", degree)
        if not (isinstance(coef0, (int, float)) and coef0 >= 0):
            raise ValueError(
                f"coef0 must be a non-negative number (else the kernel is not PSD), got {coef0!r}"
            )
        self.degree, self.gamma, self.coef0 = degree, _check_gamma(gamma), float(coef0)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.gamma * x @ y.T + self.coef0) ** self.degree

    def __repr__(self) -> str:
        return f"Polynomial(degree={self.degree}, gamma={self.gamma}, coef0={self.coef0})"


class Cosine:
    r"""Cosine similarity $k(x, y) = x\cdot y / (|x|\,|y|)$ (zero vectors map to 0)."""

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return _unit(x) @ _unit(y).T

    def __repr__(self) -> str:
        return "Cosine()"


def _unit(x: Tensor) -> Tensor:
    norm = x.norm(dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


class Centered:
    r"""A kernel centered in feature space under the empirical measure of ``data (N, d)``:

    $$k_c(x, y) = k(x, y) - m(x) - m(y) + \bar m, \quad m(x) = \tfrac1N \textstyle\sum_j k(x, x_j),
    \quad \bar m = \tfrac1N \textstyle\sum_i m(x_i).$$

    Its operator on the data is scikit-learn's ``KernelPCA`` (which always centers): the eigenvalues of
    ``KernelOperator(Centered(k, X), X)`` are ``KernelPCA.eigenvalues_ / N``. Evaluating ``m`` costs
    ``N`` kernel values per point.
    """

    def __init__(self, kernel: Kernel, data: Tensor, chunk: int = 4096):
        if data.ndim != 2 or data.shape[0] < 1:
            raise ValueError(f"data must be (N, d) with N >= 1, got shape {tuple(data.shape)}")
        self.kernel, self.data, self.chunk = kernel, data, chunk
        self.grand_mean = self.mean_embedding(data).mean()

    def mean_embedding(self, x: Tensor) -> Tensor:
        """``m(x) (n,)``, in chunks of ``chunk`` points."""
        data = self.data.to(x)
        return torch.cat(
            [self.kernel(x[i : i + self.chunk], data).mean(1) for i in range(0, x.shape[0], self.chunk)]
        )

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        mx, my = self.mean_embedding(x), self.mean_embedding(y)
        return self.kernel(x, y) - mx[:, None] - my[None, :] + self.grand_mean.to(x)

    def __repr__(self) -> str:
        return f"Centered({self.kernel!r}, data of shape {tuple(self.data.shape)})"


#: name -> kernel class, for the string form of the estimators' ``kernel=`` (as scikit-learn's names)
KERNELS: dict[str, type] = {"rbf": RBF, "laplacian": Laplacian, "poly": Polynomial, "cosine": Cosine}


def make_kernel(kernel: str | Kernel, **params: float) -> Kernel:
    """A kernel from its scikit-learn name (``"rbf"``, ``"laplacian"``, ``"poly"``, ``"cosine"``) and
    parameters, or ``kernel`` itself if it is already a callable (then ``params`` must be empty)."""
    if callable(kernel):
        if params:
            raise ValueError(f"parameters {sorted(params)} apply to named kernels only, not to {kernel!r}")
        return kernel
    if kernel not in KERNELS:
        raise ValueError(
            f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)} or a callable k(x, y) -> (n, m)"
        )
    return KERNELS[kernel](**params)
