"""Operator interfaces and the conventions every operator follows.

Conventions (stated once, here):

* The library learns the **top** of the spectrum of a *learned operator* ``T``: modes come back ordered
  leading first (largest ``T``-eigenvalue, or singular value, first). Only modes with positive
  ``T``-eigenvalue can be learned (the NestedLoRA optimum of a non-positive direction is 0), so operators
  whose physics wants the bottom of a spectrum map it to the top: a Schrödinger operator learns
  ``T = scale * (shift - H)``.
* **Reported eigenvalues** are in the operator's own convention: :meth:`Operator.eigenvalues_from_learned`
  maps ``T``-eigenvalues back (Schrödinger: energies of ``H``, ascending, ground state first; finite
  matrices: eigenvalues of the matrix, descending; SVD: singular values, descending).
* **Normalization**: ``f_l`` lives in ``L²(p)`` for the sampling measure ``p``;
  :meth:`Operator.eigenfunctions_from_model` maps model outputs to the space in which
  :meth:`Operator.exact_eigenfunctions` is orthonormal (Schrödinger: ``ψ = sqrt(p) f`` in ``L²(dx)``;
  finite operators: the uniform measure on indices). Signs of eigenfunctions are arbitrary.
* ``apply`` returns ``(Tf)(x)`` **detached**: losses never differentiate through ``T``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..numerics.quadrature import Quadrature

__all__ = ["CrossOperator", "Operator"]

Function = Callable[[Tensor], Tensor]


def check_model_output(fx: Tensor, n: int, what: str = "model") -> None:
    if not isinstance(fx, Tensor) or fx.ndim != 2 or fx.shape[0] != n:
        shape = tuple(fx.shape) if isinstance(fx, Tensor) else type(fx).__name__
        raise ValueError(f"{what} must map a batch of n = {n} points to outputs of shape (n, L); got {shape}")


class Operator(nn.Module):
    """Abstract operator ``T`` with a sampling measure ``p``; self-adjoint ones support EVD.

    Subclasses implement :meth:`sample` and :meth:`_apply_operator` (EVD) and, for SVD, :meth:`sample_pair` and
    :meth:`_apply_operator_svd`. Closed forms (:meth:`exact_eigenvalues`, :meth:`exact_eigenfunctions`) and an
    evaluation :meth:`quadrature` are optional.
    """

    #: whether ``T`` is self-adjoint in ``L²(p)`` (EVD with one set of functions)
    self_adjoint: bool = True
    #: whether ``(Tf)(x_i)`` depends on the batch only through ``x_i`` (exact or pointwise operators); False
    #: for Monte Carlo estimates of ``Tf`` from other points of the batch (kernel operators). Losses use it
    #: to decide whether estimates that combine ``f`` and ``Tf`` of one half-batch stay unbiased.
    pointwise: bool = True

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Draw a batch ``x ~ p``."""
        raise NotImplementedError

    def apply(self, f: Function, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), (Tf)(x))``, each ``(n, L)``; the second is detached."""
        if not self.self_adjoint:
            raise ValueError(f"{type(self).__name__} is not self-adjoint: pass a pair of models (left, right) for its SVD")
        fx, tfx = self._apply_operator(f, x)
        check_model_output(fx, x.shape[0])
        return fx, tfx.detach()

    def _apply_operator(self, f: Function, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def sample_pair(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
                    ) -> tuple[Tensor, Tensor]:
        """Draw ``(x, y)`` for the SVD form."""
        raise NotImplementedError(f"{type(self).__name__} has no SVD form")

    def apply_svd(self, f: Function, g: Function, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(f(x), g(y), (Tf)(y), (T*g)(x))``, each ``(n, L)``; the last two detached."""
        fx, gy, tfy, tadj_gx = self._apply_operator_svd(f, g, x, y)
        check_model_output(fx, x.shape[0], "left model")
        check_model_output(gy, y.shape[0], "right model")
        return fx, gy, tfy.detach(), tadj_gx.detach()

    def _apply_operator_svd(self, f: Function, g: Function, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no SVD form")

    def evaluation_batches(self, num_batches: int, batch_size: int, generator: torch.Generator | None,
                           dtype: torch.dtype | None, svd: bool = False):
        """Batches for final estimates: ``num_batches`` fresh samples (``(x, y)`` pairs for SVD)."""
        for _ in range(num_batches):
            yield self.sample_pair(batch_size, generator, dtype) if svd else self.sample(batch_size, generator, dtype)

    def evaluation_is_iid(self, num_batches: int, batch_size: int, svd: bool = False) -> bool:
        """Whether :meth:`evaluation_batches` yields independent random samples, so that the spread between
        batches measures the read-out's Monte Carlo error (default True; False for whole populations and
        quasi-random points)."""
        return True

    def evaluation_quadrature(self) -> Quadrature | None:
        """A deterministic rule for the final eigenvalue estimates, with weights for ``L²(p)``
        (``Σ_i w_i a(x_i) b(x_i) ≈ E_p[a b]``), or None to use :meth:`evaluation_batches` (default)."""
        return None

    def batch_is_population(self, batch_size: int, svd: bool = False) -> bool:
        """Whether every training batch of ``batch_size`` (pairs for ``svd``) is the whole finite population,
        each point once: then batch averages are exact and losses use full-batch second moments instead
        of split-half estimates (see :meth:`~neuralsvd.losses.SpectralLoss.use_population_batches`).
        Default: False (sampled batches)."""
        return False

    def validate(self, x: Tensor) -> None:
        """Raise ``ValueError`` if the operator is ill-defined on the batch ``x`` (called once by fit)."""

    # -- conventions ---------------------------------------------------------------------------------
    def eigenvalues_from_learned(self, eigenvalues: Tensor) -> Tensor:
        """Map eigenvalues of the learned ``T`` to the operator's reporting convention (default: same)."""
        return eigenvalues

    def eigenfunctions_from_model(self, fx: Tensor, x: Tensor) -> Tensor:
        """Map model outputs at ``x`` to the space of :meth:`exact_eigenfunctions` (default: same)."""
        return fx

    # -- closed forms (optional) -------------------------------------------------------------------------
    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        """The top ``num_modes`` eigenvalues (SVD: singular values) in the reporting convention."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form spectrum")

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        """Orthonormal true eigenfunctions (SVD: left singular functions) at ``x``, ``(n, L)``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form eigenfunctions")

    def exact_right_functions(self, y: Tensor, num_modes: int) -> Tensor:
        """SVD only: orthonormal true right singular functions at ``y``, ``(n, L)``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form right singular functions")

    def quadrature(self) -> Quadrature:
        """Points and weights for accurate inner products of eigenfunctions (used by evaluate)."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation quadrature")

    def right_quadrature(self) -> Quadrature:
        """SVD only: quadrature on the output space."""
        return self.quadrature()


class CrossOperator(Operator):
    """Abstract operator ``T: F -> G`` between two spaces (SVD with left functions ``f`` and right ``g``)."""

    self_adjoint = False
