"""The outcome of a fit: :class:`FitResult` (also built by baselines such as Nyström)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .decomposition import Decomposition, decomposition_of

if TYPE_CHECKING:  # annotations only: operators may build results without importing the training loop
    from ..operators.base import Operator

__all__ = ["NORM_RATIO_RANGE", "FitResult"]

#: squared norm / eigenvalue outside this range flags a NestedLoRA mode as unconverged
NORM_RATIO_RANGE = (0.5, 2.0)


@dataclass
class FitResult:
    """The outcome of :func:`fit`.

    Attributes:
        model: the trained model (the EMA of the weights if ``ema_decay`` was set), in eval mode;
            for SVD a pair ``(left, right)``.
        operator: the operator that was decomposed.
        eigenvalues: ``(L,)`` final estimates in the operator's reporting convention, in mode order
            (leading first); for SVD the singular values (same tensor as ``singular_values``).
        learned_eigenvalues: ``(L,)`` the same estimates for the learned operator ``T`` (descending).
        order: ``(L,)`` permutation from model output columns to modes (leading first).
        norms: ``(L,)`` estimated ``L²(p)`` norms of the modes (SVD: of the left functions), used to
            normalize :meth:`eigenfunctions`.
        eigenvalue_stderr: ``(L,)`` or None: the Monte Carlo standard error of each of ``eigenvalues`` from
            the spread of the final read-out's batches (a grouped jackknife), in the same convention and
            order; None where the read-out is not an i.i.d. sample (quadrature, whole finite populations).
            It measures how precisely the read-out integrates the learned functions, not how close they
            are to the true eigenfunctions.
        mixing: ``(L, L)`` or None: with the ``"ritz"`` readout, mode ``j`` is
            ``model(x)[:, order] @ mixing[:, j]`` (the Ritz functions; then ``norms`` are 1).
        history: ``{"step": (S,), "loss": (S,), "eigenvalues": (S, L)}`` per training step: minibatch
            eigenvalue estimates in the reporting convention, columns in mode order (as ``eigenvalues``).
        steps, wall_seconds, steps_per_second: what the run did (this call only, when resumed).
        extras: diagnostics (warm-start steps, rollbacks, learning-rate scale, resumed step, norm ratios).
        config: the :class:`~neuralsvd.problems.ExperimentConfig` of a run loaded with
            :func:`neuralsvd.load` (None for a direct :func:`~neuralsvd.fit`).
    """

    model: Any
    operator: Operator
    eigenvalues: Tensor
    learned_eigenvalues: Tensor
    order: Tensor
    norms: Tensor
    history: dict[str, Tensor]
    steps: int
    wall_seconds: float
    steps_per_second: float
    right_norms: Tensor | None = None
    mixing: Tensor | None = None
    eigenvalue_stderr: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    config: Any = None

    @property
    def unconverged_modes(self) -> list[int]:
        """Modes (leading first) whose ``‖f_l‖² / λ_l`` (``extras["norm_ratio"]``, 1 at the NestedLoRA
        optimum) lies outside :data:`~neuralsvd.training.readout.NORM_RATIO_RANGE`: their eigenvalue estimates
        are unreliable (a mode stuck near ``f = 0``, or one absorbing another's residual). Empty where
        the ratio means nothing (other losses, the ``"ritz"`` read-out)."""
        lo, hi = NORM_RATIO_RANGE
        ratio = self.extras.get("norm_ratio") or []
        return [i for i, r in enumerate(ratio) if not lo <= r <= hi]

    @property
    def status(self) -> str:
        """``"ok"``, or ``"unconverged"`` when :attr:`unconverged_modes` is not empty (a diverged run raises
        :class:`~neuralsvd.DivergenceError` instead of returning)."""
        return "unconverged" if self.unconverged_modes else "ok"

    @property
    def decomposition(self) -> Decomposition:
        """:data:`~neuralsvd.training.decomposition.EVD` or :data:`~neuralsvd.training.decomposition.SVD`."""
        return decomposition_of(self.model)

    @property
    def is_svd(self) -> bool:
        return self.decomposition.is_svd

    @property
    def singular_values(self) -> Tensor:
        return self.eigenvalues

    @property
    def norm_eigenvalues(self) -> Tensor:
        """The second read-out, from norms: ``‖f_l‖²`` (SVD: ``‖f_l‖‖g_l‖``), which tends to the learned
        ``T``'s eigenvalue at the NestedLoRA optimum, mapped to the reporting convention, in mode order.
        Its gap to :attr:`eigenvalues` (Rayleigh quotients) is a convergence diagnostic. Not defined for
        the ``"ritz"`` readout (Ritz functions are normalized)."""
        if self.mixing is not None:
            raise ValueError("norm_eigenvalues is defined for the 'rayleigh' readout only")
        learned = self.decomposition.learned_from_norms(self.norms, self.right_norms)
        return self.operator.eigenvalues_from_learned(learned)

    def _modes(self, module: nn.Module, x: Tensor, norms: Tensor) -> Tensor:
        p = next(module.parameters(), None)
        if p is not None and x.is_floating_point():
            x = x.to(p)
        with torch.no_grad():
            out = module(x)[:, self.order.to(x.device)]
            if self.mixing is not None:
                out = out @ self.mixing.to(out)
            return out / norms.to(out)

    def eigenfunctions(self, x: Tensor) -> Tensor:
        """Learned eigenfunctions at ``x``, ``(n, L)``, unit norm, in the space of the operator's exact
        eigenfunctions (for Schrödinger: ``ψ = sqrt(p) f`` in ``L²(dx)``); SVD: the left functions."""
        fx = self._modes(self.decomposition.primary(self.model), x, self.norms)
        return self.operator.eigenfunctions_from_model(fx.to(x.dtype) if x.is_floating_point() else fx, x)

    def left_functions(self, x: Tensor) -> Tensor:
        return self.eigenfunctions(x)

    def right_functions(self, y: Tensor) -> Tensor:
        """SVD only: learned right singular functions at ``y``, ``(n, L)``, unit norm."""
        if not self.is_svd:
            raise ValueError("right_functions exist for SVD results only (fit with a (left, right) model pair)")
        return self._modes(self.model[1], y, self.right_norms)
