r"""SpIN: spectral inference networks (Pfau et al., ICLR 2019), a baseline.

For network outputs ``u = (u_1..u_L)`` let ``Σ = E[u uᵀ]`` and ``Π = E[u (Tu)ᵀ]``, both ``(L, L)``, and
``Σ = C Cᵀ`` (Cholesky; the paper calls the factor ``L``). The whitened functions ``v = C⁻¹ u`` are
orthonormal and ``Λ = C⁻¹ Π C⁻ᵀ = E[v (Tv)ᵀ]``; SpIN maximizes ``Tr Λ`` with a *masked* gradient in which
mode ``k`` only ascends ``Λ_kk`` with ``u_1..u_{k-1}`` held fixed (``C`` is lower triangular, so ``v_k``
depends on ``u_1..u_k`` only). At the optimum ``v_k`` is the ``k``-th eigenfunction of ``T`` (largest
first) and ``Λ_kk`` its eigenvalue. In closed form, with ``D = diag(C⁻¹)``, the masked sensitivities of
the minimized loss ``-Tr Λ`` are

    ∂/∂Π = -C⁻ᵀ D,        ∂/∂Σ = C⁻ᵀ triu(Λ D),

and a parameter ``θ`` receives ``(2/n) Σ_b (Tu)(x_b) ∂/∂Π · ∂u(x_b)/∂θ + Σ_ij (∂/∂Σ)_ij J̄_ij`` where
``J_ij = (2/n) Σ_b u_i(x_b) ∂u_j(x_b)/∂θ`` is the Jacobian term of ``Σ``.

**Kept from the original** (DeepMind's ``spectral_inference_networks``): the objective and its masked
gradient above; the bi-level optimization, i.e. moving averages with rate ``decay`` of ``Σ`` (starting at
``I``) and of its Jacobian ``J`` (starting at 0), both updated with the current batch *before* the step's
gradient is formed, without bias correction; ``Π`` and its gradient from the current batch; the
eigenvalue read-out ``diag(C⁻¹ Π C⁻ᵀ)`` with ``C`` from the averaged ``Σ``; and the learned
eigenfunctions ``C⁻¹ u`` (:meth:`SpIN.readout`).

**Changed:**

* Sign: this library learns the *top* of ``T`` (operators map a wanted bottom to the top), so the loss is
  ``-Tr Λ``; the original minimizes ``Tr Λ`` of ``H`` directly. For Schrödinger problems
  (``T = scale·(shift - H)``) both find the same states.
* Memory: the original stores ``J̄`` as ``L × L × P`` and forms ``∂Σ/∂θ`` as a full Jacobian (the
  authors' PyTorch port from per-example Jacobians, ``n × L × P``): tens of GB at ``L = 16``. Here a
  parameter that is split by mode along one axis (slice ``m`` feeds output ``m`` only, as in the
  stacked networks of :class:`~neuralsvd.models.ParallelMLP`) has ``J_ij = 0`` off the block ``j = m``,
  so its average is stored as ``(L, *shape)`` (``L·P`` in all) and this batch's term comes from ``L``
  batched vector-Jacobian products (cotangent ``u_i``), never from per-example Jacobians. Parameters
  shared by several modes keep the full ``(L, L, *shape)`` average (``L²`` products): the fallback that
  makes any model work, with the original's memory. See :func:`mode_axes` for how parameters are classified.
* ``T`` is never differentiated: by self-adjointness the ``Π`` part of the gradient is
  ``(2/n) (Tu) ∂/∂Π`` with ``Tu`` detached (the original backpropagates through its finite-difference
  Laplacian with a custom covariance gradient, which is the same in expectation).
* ``decay`` lies in ``(0, 1]``; ``decay = 1`` (no memory, the exact masked gradient) is what the original
  spells ``decay = 0``.
* A ``Σ̄`` that is not positive definite gives a NaN loss (reported by ``fit`` as divergence) instead of an
  exception; no jitter is added (the authors' port adds ``1e-3 I``).

EVD only: :meth:`SpIN.svd` (and :meth:`SpIN.attach` with a model pair) raise ``NotImplementedError``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..training.decomposition import decomposition_of
from .base import LinearReadout, LossOutput, SpectralLoss, evd_only_error, prescribed_gradient

__all__ = ["SpIN", "mode_axes"]


def mode_axes(model: nn.Module) -> dict[str, int | None]:
    """For each parameter of ``model``, the axis along which slice ``m`` feeds output ``m`` only, or
    ``None`` for a parameter shared by several modes.

    Models declare their layout with a ``mode_axes()`` method returning this dict (the library's
    :class:`~neuralsvd.models.ParallelMLP`, :class:`~neuralsvd.models.MLP` and
    :class:`~neuralsvd.models.Tabular` do). Any other model is treated as fully shared (correct for
    every model, with ``O(L²P)`` memory).
    """
    declared = getattr(model, "mode_axes", None)
    if callable(declared):
        return dict(declared())
    return dict.fromkeys(name for name, _ in model.named_parameters())


class SpIN(SpectralLoss):
    """Spectral inference networks: Cholesky-whitened trace with masked gradient and moving averages.

    Args:
        num_modes: ``L``.
        decay: rate ``β ∈ (0, 1]`` of the moving averages of ``Σ`` and of its Jacobian
            (``x̄ ← (1 - β) x̄ + β x``); the paper's 0.01 by default, 1 for no averaging.

    :meth:`attach` (called by :func:`~neuralsvd.fit`) sizes the Jacobian averages for the model and resets
    the state; the averages are buffers, so they are checkpointed. Only a forward on outputs that require
    grad (a training step) updates them. ``eigenvalues`` are ``diag(C⁻¹ Π C⁻ᵀ)``; ``gram`` the batch ``Σ``.
    """

    def __init__(self, num_modes: int, decay: float = 0.01):
        super().__init__(num_modes)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"decay must be a number in (0, 1], got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("sigma_avg", torch.eye(num_modes))  # (L, L)
        self.jacobian_avg = nn.Module()  # one buffer per trainable parameter, filled by attach
        self._params: list[nn.Parameter] = []
        self._axes: list[int | None] = []

    # -- hooks ------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module | tuple[nn.Module, nn.Module]) -> None:
        if decomposition_of(model).is_svd:
            raise evd_only_error(self)
        axes = mode_axes(model)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("SpIN needs a model with trainable parameters")
        L = self.num_modes
        self._params, self._axes, self.jacobian_avg = [], [], nn.Module()
        for name, p in named:
            axis = axes.get(name)
            if axis is not None and p.shape[axis] != L:
                raise ValueError(f"parameter {name!r} of shape {tuple(p.shape)} has no mode axis {axis} "
                                 f"of size L={L}")
            shape = (L, *p.shape) if axis is not None else (L, L, *p.shape)
            self.jacobian_avg.register_buffer(name.replace(".", "_"), p.new_zeros(shape))
            self._params.append(p)
            self._axes.append(axis)
        self.sigma_avg = torch.eye(L, dtype=named[0][1].dtype, device=named[0][1].device)

    def readout(self, model: nn.Module) -> nn.Module:
        """``x -> C⁻¹ u(x)`` (rows: ``u(x) C⁻ᵀ``) with ``C`` the Cholesky factor of the averaged ``Σ``."""
        chol = torch.linalg.cholesky(self.sigma_avg.double())
        eye = torch.eye(self.num_modes, dtype=chol.dtype, device=chol.device)
        whitening = torch.linalg.solve_triangular(chol, eye, upper=False).T  # C⁻ᵀ
        return LinearReadout(model, whitening.to(self.sigma_avg.dtype))

    # -- loss -------------------------------------------------------------------------------------------
    def forward(self, fx: Tensor, tfx: Tensor) -> LossOutput:
        """``fx = u(x)``, ``tfx = (Tu)(x)``, each ``(n, L)``."""
        self.check_batch(fx, tfx)
        n = fx.shape[0]
        training = fx.requires_grad
        if training and not self._params:
            raise RuntimeError("SpIN needs attach(model) before training (fit calls it)")
        jacobian = self._batch_jacobian(fx) if training else []
        with torch.no_grad():
            u, tu = fx.detach(), tfx.detach()
            # Σ, Π (L, L) and this batch's Jacobian terms, of the global batch (data-parallel)
            sigma, pi, *jacobian = self.batch_mean(u.T @ u / n, u.T @ tu / n, *jacobian)
            if training:
                self.sigma_avg.lerp_(sigma.to(self.sigma_avg), self.decay)
                for avg, term in zip(self.jacobian_avg.buffers(), jacobian):
                    avg.lerp_(term, self.decay)
            lam, grad_pi, grad_sigma = _masked_sensitivities(self.sigma_avg.to(pi), pi)
            value = -lam.trace()
        if not training:
            return LossOutput(value, lam.diagonal().clone(), sigma)
        grads = [(2.0 / n) * tu @ grad_pi.to(tu)]  # (n, L) for fx
        grads += [self._contract(grad_sigma.to(avg), avg, axis)
                  for avg, axis in zip(self.jacobian_avg.buffers(), self._axes)]
        loss = prescribed_gradient(value, [fx, *self._params], grads)
        return LossOutput(loss, lam.diagonal().clone(), sigma)

    def _batch_jacobian(self, fx: Tensor) -> list[Tensor]:
        """This batch's ``J_ij = (2/n) Σ_b u_i(x_b) ∂u_j(x_b)/∂θ`` per parameter, in the stored layout."""
        n, L = fx.shape
        u = (2.0 / n) * fx.detach()  # (n, L)
        out: list[Tensor | None] = [None] * len(self._params)
        for split in (True, False):
            index = [k for k, axis in enumerate(self._axes) if (axis is not None) == split]
            if not index:
                continue
            if split:  # cotangent i: u_i(x_b) on every output (slice m of a split parameter sees output m)
                cotangents = u.T.unsqueeze(-1).expand(L, n, L)  # (L, n, L)
            else:  # cotangent (i, j): u_i(x_b) on output j
                eye = torch.eye(L, dtype=u.dtype, device=u.device)
                cotangents = (u.T[:, None, :, None] * eye[None, :, None, :]).reshape(L * L, n, L)
            grads = torch.autograd.grad(fx, [self._params[k] for k in index], cotangents, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True, materialize_grads=True)
            for k, g in zip(index, grads):
                out[k] = g if split else g.view(L, L, *g.shape[1:])
        return out  # type: ignore[return-value]

    @staticmethod
    def _contract(grad_sigma: Tensor, avg: Tensor, axis: int | None) -> Tensor:
        """``Σ_ij (∂/∂Σ)_ij J̄_ij`` for one parameter (stored as ``(L, *shape)`` or ``(L, L, *shape)``)."""
        if axis is None:
            return torch.einsum("ij,ij...->...", grad_sigma, avg)
        moved = avg.movedim(axis + 1, -1)  # (L_i, ..., L_m)
        weights = grad_sigma.view(grad_sigma.shape[0], *[1] * (moved.ndim - 2), grad_sigma.shape[1])
        return (moved * weights).sum(0).movedim(-1, axis)


def _masked_sensitivities(sigma: Tensor, pi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(Λ, ∂/∂Π, ∂/∂Σ)`` of ``-Tr Λ`` with the SpIN mask, each ``(L, L)``; NaN if ``Σ`` is not PD."""
    chol, info = torch.linalg.cholesky_ex(sigma)
    chol = torch.where(info == 0, chol, torch.full_like(chol, float("nan")))
    eye = torch.eye(sigma.shape[0], dtype=sigma.dtype, device=sigma.device)
    chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # C⁻¹, lower triangular
    lam = chol_inv @ pi @ chol_inv.T
    d = chol_inv.diagonal()  # D = diag(C⁻¹) as a vector
    grad_pi = -chol_inv.T * d  # -C⁻ᵀ D
    grad_sigma = chol_inv.T @ (lam * d).triu()  # C⁻ᵀ triu(Λ D)
    return lam, grad_pi, grad_sigma
