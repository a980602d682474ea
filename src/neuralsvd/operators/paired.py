r"""Paired-sample operators: the SVD of the dependence between two views ``(X, Y) ~ p(x, y)``.

The operator is the conditional expectation $T: L^2(p_X) \to L^2(p_Y)$, $(Tf)(y) = E[f(X) \mid Y = y]$,
with adjoint $(T^*g)(x) = E[g(Y) \mid X = x]$ and $\langle g, Tf\rangle = E_{p(x,y)}[f(X) g(Y)]$. Its
SVD $\frac{p(x,y)}{p(x)p(y)} = \sum_k \sigma_k \phi_k(x) \psi_k(y)$ is the *canonical dependence kernel*:
singular values in ``[0, 1]``, left functions ``φ_k`` on the ``x`` view and right functions ``ψ_k`` on the
``y`` view (orthonormal in ``L²(p_X)``, ``L²(p_Y)``), and the top triple is the constant, ``σ_0 = 1``.
Reported eigenvalues are the singular values, descending, mode 0 included.

**Estimator.** For a batch of pairs, ``(Tf)(y_i) ≈ f(x_i)`` and ``(T*g)(x_i) ≈ g(y_i)``: single-sample,
unbiased estimates of the conditional expectations, so the operator term ``mean_i f(x_i) g(y_i)`` is
unbiased; :class:`~neuralsvd.NestedLoRA` takes the second moments from disjoint halves of the batch
(independent pairs), so the whole objective is unbiased.

**Importance sampling** (:class:`GaussianPairs` with ``proposal_scale > 1``): pairs are drawn from a wider
``q(x, y)`` and functions live in ``L²(q_X)``, ``L²(q_Y)``: the model represents ``f sqrt(p_X/q_X)`` (a
unitary change of space, as the Schrödinger operators' ``ψ = sqrt(p) f``), and the single-sample
estimates carry the weight ``w = p(x,y)/q(x,y) · sqrt(q_X(x) q_Y(y) / (p_X(x) p_Y(y)))``, which keeps them
unbiased. Singular values are unchanged; exact singular functions are returned in the same space.

**The constant mode is pinned**, as in the authors' canonical dependence kernel: wrap both networks with
:meth:`PairedOperator.pinned_models` (:class:`ConstantFirst`), whose first output is the constant 1 (as
represented: ``sqrt(p/q)`` under a proposal). That is exactly the NestedLoRA optimum of mode 0
(``f_0 = sqrt(σ_0) φ_0 = 1``), so with nesting the learned outputs become the non-trivial modes 1, 2, ...,
orthogonal to constants (centered). ``num_modes`` counts the constant.

**References.** :class:`GaussianPairs`: jointly Gaussian views in closed form (canonical correlations
``ρ_i``; singular values ``Π_i ρ_i^{k_i}``, singular functions products of normalized Hermite polynomials
``He_k / sqrt(k!)`` of the canonical variates; for one pair with correlation ``ρ``, ``σ_k = |ρ|^k``).
:func:`cross_view_retrieval` scores two-view embeddings by retrieval.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..numerics import quadrature as quad
from .base import CrossOperator, Function, check_model_output
from .kernel import (
    POPULATION_LIMIT,
    gaussian_qmc,
    gaussian_quadrature,
    normalized_hermite_e,
    top_multi_indices,
)

__all__ = ["ConstantFirst", "PairedOperator", "PairedSamples", "GaussianPairs", "cross_view_retrieval"]


class ConstantFirst(nn.Module):
    """``x (n, d) -> [c(x), module(x)]``, ``(n, 1 + K)``: pins the constant top mode of a paired operator.

    ``c`` is the constant function as represented by the operator: 1 (default), or ``sqrt(p/q)`` under
    an importance proposal (:meth:`PairedOperator.pinned_models` passes the right one).
    """

    def __init__(self, module: nn.Module, constant: nn.Module | None = None):
        super().__init__()
        self.module, self.constant = module, constant

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)  # (n, K)
        first = torch.ones_like(out[:, :1]) if self.constant is None else self.constant(x).to(out)
        return torch.cat([first, out], 1)


class _SqrtDensityRatio(nn.Module):
    """``sqrt(p/q)(v) = s^{d/2} exp(-(1 - 1/s²) vᵀΣ⁻¹v / 4)`` for ``p = N(0, Σ)``, ``q = N(0, s²Σ)``,
    ``Σ = L Lᵀ``:
    ``v (n, d) -> (n, 1)``; maps ``L²(p)`` functions into ``L²(q)`` unitarily (``f -> f sqrt(p/q)``)."""

    def __init__(self, cholesky: Tensor, scale: float):
        super().__init__()
        self.register_buffer("cholesky", cholesky)
        self.scale = scale

    def forward(self, v: Tensor) -> Tensor:
        r = 1 - self.scale**-2
        log = 0.5 * v.shape[1] * math.log(self.scale) - 0.25 * r * _mahalanobis(v, self.cholesky)
        return torch.exp(log).unsqueeze(1)


def _mahalanobis(v: Tensor, cholesky: Tensor) -> Tensor:
    """``vᵀ Σ⁻¹ v`` per row for ``Σ = L Lᵀ``: ``(n, d) -> (n,)``."""
    z = torch.linalg.solve_triangular(cholesky.to(v), v.T, upper=False)
    return (z * z).sum(0)


def _as_views(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x)
    t = t.unsqueeze(1) if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[0] < 2 or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{name} must be finite floats of shape (N, d) with N >= 2, got shape {tuple(t.shape)} "
            f"dtype {t.dtype}"
        )
    return t


class PairedOperator(CrossOperator):
    """The conditional-expectation operator of ``p(x, y)`` (module docstring); subclasses draw the pairs.

    Attributes: ``dim_x``, ``dim_y`` (``dim`` is ``dim_x``, the input dimension of the left model).
    """

    dim_x: int
    dim_y: int

    @property
    def dim(self) -> int:
        return self.dim_x

    def pair_weights(self, x: Tensor, y: Tensor) -> Tensor:
        """Importance weights of the pairs ``(n, 1)`` (module docstring); 1 when pairs come from ``p``."""
        return torch.ones_like(x[:, :1])

    def pinned_constant(self, view: str) -> nn.Module | None:
        """The constant function of view ``"x"`` or ``"y"`` as the models represent it (None: 1)."""
        return None

    def pinned_models(self, left: nn.Module, right: nn.Module) -> tuple[ConstantFirst, ConstantFirst]:
        """``(left, right)`` networks for the non-constant modes, behind the pinned constant mode."""
        return ConstantFirst(left, self.pinned_constant("x")), ConstantFirst(right, self.pinned_constant("y"))

    def _apply_operator_svd(self, f: Function, g: Function, x: Tensor, y: Tensor):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"paired batches need as many x as y, got {x.shape[0]} and {y.shape[0]}")
        fx, gy = f(x), g(y)  # (n, L) each
        check_model_output(fx, x.shape[0], "left model")
        check_model_output(gy, y.shape[0], "right model")
        w = self.pair_weights(x, y).to(fx)  # (n, 1)
        return fx, gy, w * fx.detach(), w * gy.detach()


class PairedSamples(PairedOperator):
    """The empirical joint distribution of paired data ``x (N, dx)``, ``y (N, dy)`` (row ``i`` of each is
    one pair). Batches are drawn with replacement; evaluation uses all pairs once (up to
    :data:`~neuralsvd.operators.kernel.POPULATION_LIMIT` pairs, else fresh batches)."""

    def __init__(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray):
        super().__init__()
        x, y = _as_views(x, "x"), _as_views(y, "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same number of pairs, got {x.shape[0]} and {y.shape[0]}")
        self.register_buffer("x", x)
        self.register_buffer("y", y)
        self.dim_x, self.dim_y = x.shape[1], y.shape[1]

    def sample_pair(self, n, generator=None, dtype=None):
        device = generator.device if generator is not None else self.x.device
        index = torch.randint(self.x.shape[0], (n,), generator=generator, device=device)
        dtype = dtype or torch.get_default_dtype()
        return self.x.to(device)[index].to(dtype), self.y.to(device)[index].to(dtype)

    def evaluation_is_iid(self, num_batches, batch_size, svd=False):
        return self.x.shape[0] > POPULATION_LIMIT

    def evaluation_batches(self, num_batches, batch_size, generator, dtype, svd=False):
        if self.evaluation_is_iid(num_batches, batch_size, svd):
            yield from super().evaluation_batches(num_batches, batch_size, generator, dtype, svd)
            return
        device = generator.device if generator is not None else self.x.device
        dtype = dtype or torch.get_default_dtype()
        yield self.x.to(device=device, dtype=dtype), self.y.to(device=device, dtype=dtype)

    def quadrature(self) -> quad.Quadrature:
        """The empirical measure of the ``x`` view."""
        n = self.x.shape[0]
        return quad.Quadrature(self.x.double(), torch.full((n,), 1.0 / n, dtype=torch.float64))

    def right_quadrature(self) -> quad.Quadrature:
        n = self.y.shape[0]
        return quad.Quadrature(self.y.double(), torch.full((n,), 1.0 / n, dtype=torch.float64))


def _inverse_sqrt(c: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.rsqrt()) @ v.T


class GaussianPairs(PairedOperator):
    """Jointly Gaussian views ``(X, Y) ~ p = N(0, covariance)``, ``X ∈ R^dim_x`` the first ``dim_x``
    coordinates, in closed form (module docstring).

    With whitened cross-covariance ``Σxx^{-1/2} Σxy Σyy^{-1/2} = U diag(ρ) Vᵀ``, canonical variates
    ``u = Uᵀ Σxx^{-1/2} x`` and ``v = Vᵀ Σyy^{-1/2} y`` are standard normal with ``Cov(u_i, v_j) = ρ_i δ_ij``;
    the mode of multi-index ``k`` has ``σ = Π_i ρ_i^{k_i}``, ``φ(x) = Π_i He_{k_i}(u_i)/sqrt(k_i!)`` and
    ``ψ(y) = Π_i He_{k_i}(v_i)/sqrt(k_i!)``, ordered by decreasing ``σ`` (ties: lexicographic in ``k``).

    ``proposal_scale = s > 1`` draws pairs from ``q = N(0, s² covariance)`` with importance weights (module
    docstring): high Hermite modes keep much of their mass where ``p`` rarely samples (``He_6/sqrt(6!)``
    has 45% of its ``L²(N(0, 1))`` mass beyond ``|x| = 4``, where ``p`` puts 6e-5 of its samples), and
    under ``q`` the represented functions ``φ sqrt(p_X/q_X)`` decay. Evaluation batches are quasi-Monte
    Carlo (scrambled Sobol through the normal quantile) from ``q``.
    """

    def __init__(self, covariance: Tensor | np.ndarray, dim_x: int, proposal_scale: float = 1.0):
        super().__init__()
        cov = torch.as_tensor(covariance, dtype=torch.float64)
        d = cov.shape[0]
        if cov.ndim != 2 or cov.shape != (d, d) or not 1 <= dim_x < d:
            raise ValueError(
                f"covariance must be (dx + dy, dx + dy) with 1 <= dim_x < dx + dy, got shape "
                f"{tuple(cov.shape)} and dim_x={dim_x!r}"
            )
        if not torch.allclose(cov, cov.T, rtol=0, atol=1e-12):
            raise ValueError("covariance must be symmetric")
        if not (isinstance(proposal_scale, (int, float)) and 1 <= proposal_scale < math.inf):
            raise ValueError(f"proposal_scale must be a finite number >= 1, got {proposal_scale!r}")
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError("covariance must be positive definite (|ρ| < 1 for every canonical pair)")
        self.dim_x, self.dim_y, self.proposal_scale = dim_x, d - dim_x, float(proposal_scale)
        self.register_buffer("cholesky", chol)
        sxx, syy, sxy = cov[:dim_x, :dim_x], cov[dim_x:, dim_x:], cov[:dim_x, dim_x:]
        wx, wy = _inverse_sqrt(sxx), _inverse_sqrt(syy)
        u, rho, vh = torch.linalg.svd(wx @ sxy @ wy, full_matrices=False)
        self.canonical_correlations = rho  # (r,), descending
        self.register_buffer("x_directions", wx @ u)  # (dx, r): u = x @ x_directions
        self.register_buffer("y_directions", wy @ vh.T)  # (dy, r)
        self.register_buffer("x_cholesky", torch.linalg.cholesky(sxx))
        self.register_buffer("y_cholesky", torch.linalg.cholesky(syy))
        self.x_ratio = _SqrtDensityRatio(self.x_cholesky.clone(), self.proposal_scale)
        self.y_ratio = _SqrtDensityRatio(self.y_cholesky.clone(), self.proposal_scale)

    @classmethod
    def bivariate(cls, rho: float, proposal_scale: float = 1.0) -> "GaussianPairs":
        """Standard normal ``X``, ``Y`` with correlation ``rho``: ``σ_k = |rho|^k``, ``φ_k = He_k/sqrt(k!)``,
        ``ψ_k = sign(rho)^k He_k/sqrt(k!)``."""
        if not -1 < rho < 1:
            raise ValueError(f"rho must be in (-1, 1), got {rho!r}")
        return cls(torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64), 1, proposal_scale)

    # -- sampling from q = N(0, s² Σ) and the importance weights -------------------------------------------
    def sample_pair(self, n, generator=None, dtype=None):
        device = generator.device if generator is not None else self.cholesky.device
        z = torch.randn(n, self.cholesky.shape[0], generator=generator, device=device, dtype=torch.float64)
        xy = (self.proposal_scale * z @ self.cholesky.to(device).T).to(dtype or torch.get_default_dtype())
        return xy[:, : self.dim_x], xy[:, self.dim_x :]

    def evaluation_is_iid(self, num_batches, batch_size, svd=False):
        return False  # quasi-Monte Carlo points

    def evaluation_batches(self, num_batches, batch_size, generator, dtype, svd=False):
        zero = torch.zeros(self.cholesky.shape[0], dtype=torch.float64)
        pairs = gaussian_qmc(
            num_batches * batch_size,
            zero,
            self.proposal_scale * self.cholesky.cpu(),
            generator,
            dtype or torch.get_default_dtype(),
        )
        for xy in pairs.split(batch_size):
            yield xy[:, : self.dim_x], xy[:, self.dim_x :]

    def pair_weights(self, x: Tensor, y: Tensor) -> Tensor:
        """``w = p/q · sqrt(q_X q_Y / (p_X p_Y))``; with ``r = 1 - 1/s²`` and Mahalanobis norms ``m``,
        ``log w = (d/2) log s - r m(x, y)/2 + r (m(x) + m(y))/4 ≤ (d/2) log s``."""
        if self.proposal_scale == 1.0:
            return super().pair_weights(x, y)
        s, r = self.proposal_scale, 1 - self.proposal_scale**-2
        xd, yd = x.double(), y.double()
        joint = _mahalanobis(torch.cat([xd, yd], 1), self.cholesky)
        marginal = _mahalanobis(xd, self.x_cholesky) + _mahalanobis(yd, self.y_cholesky)
        log_w = 0.5 * self.cholesky.shape[0] * math.log(s) - 0.5 * r * joint + 0.25 * r * marginal
        return torch.exp(log_w).to(x.dtype).unsqueeze(1)

    def pinned_constant(self, view: str) -> nn.Module | None:
        """``sqrt(p/q)`` of the view (a fresh module), or None without a proposal."""
        if self.proposal_scale == 1.0:
            return None
        ratio = {"x": self.x_ratio, "y": self.y_ratio}[view]
        return _SqrtDensityRatio(ratio.cholesky.clone(), self.proposal_scale)

    # -- closed forms ----------------------------------------------------------------------------------------
    def _indices(self, num_modes: int) -> list[tuple[int, ...]]:
        decay = [-math.log(r) if r > 0 else math.inf for r in self.canonical_correlations.tolist()]
        return top_multi_indices(decay, num_modes)

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        k = torch.tensor(self._indices(num_modes), dtype=torch.float64)  # (L, r)
        return (self.canonical_correlations**k).prod(1)

    def _singular_functions(self, v: Tensor, directions: Tensor, ratio: nn.Module, num_modes: int) -> Tensor:
        """Products of normalized Hermite polynomials of the canonical variates ``v @ directions``, mapped
        into ``L²(q)``: ``(n, L)``."""
        v = v.double()
        variates = v @ directions.to(v.device)  # (n, r)
        idx = self._indices(num_modes)
        kmax = max(max(i) for i in idx)
        per_axis = [
            normalized_hermite_e(variates[:, i], kmax) for i in range(variates.shape[1])
        ]  # (n, kmax+1)
        modes = torch.stack(
            [torch.stack([per_axis[i][:, k] for i, k in enumerate(m)]).prod(0) for m in idx], 1
        )
        return modes * ratio(v)

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        """Left singular functions ``φ`` at ``x (n, dim_x)``, times ``sqrt(p_X/q_X)`` (orthonormal in
        ``L²(q_X)``)."""
        return self._singular_functions(x, self.x_directions, self.x_ratio, num_modes)

    def exact_right_functions(self, y: Tensor, num_modes: int) -> Tensor:
        """Right singular functions ``ψ`` at ``y (n, dim_y)`` (times ``sqrt(p_Y/q_Y)``)."""
        return self._singular_functions(y, self.y_directions, self.y_ratio, num_modes)

    def quadrature(self) -> quad.Quadrature:
        """A Gauss–Legendre rule for ``q_X`` (``dim_x ≤ 3``)."""
        return gaussian_quadrature(
            torch.zeros(self.dim_x, dtype=torch.float64), self.proposal_scale * self.x_cholesky.cpu()
        )

    def right_quadrature(self) -> quad.Quadrature:
        return gaussian_quadrature(
            torch.zeros(self.dim_y, dtype=torch.float64), self.proposal_scale * self.y_cholesky.cpu()
        )


def cross_view_retrieval(
    query: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    k: int = 10,
    weights: Tensor | None = None,
) -> dict[str, float]:
    """Retrieval of ``gallery`` items for each ``query`` item by the score ``Σ_l w_l q_l g_l``.

    Relevant items share the query's label. Returns ``precision_at_k`` (mean over queries of the
    fraction of relevant items among the top ``k``) and ``mean_average_precision`` (mean over queries with
    at least one relevant item of the average precision of the full ranking; ties keep gallery order).

    Shapes: ``query (n, K)``, ``gallery (m, K)``, labels ``(n,)`` and ``(m,)``, ``weights (K,)`` (default 1).
    """
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query (n, K) and gallery (m, K) must share K, got {tuple(query.shape)}, {tuple(gallery.shape)}"
        )
    if not 1 <= k <= gallery.shape[0]:
        raise ValueError(f"k must be in [1, {gallery.shape[0]}], got {k}")
    w = (
        torch.ones(query.shape[1], dtype=torch.float64)
        if weights is None
        else torch.as_tensor(weights).double()
    )
    scores = (query.double() * w) @ gallery.double().T  # (n, m)
    ranking = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (n, m)
    relevant = (torch.as_tensor(gallery_labels)[ranking] == torch.as_tensor(query_labels)[:, None]).double()
    precision = relevant.cumsum(1) / torch.arange(1, relevant.shape[1] + 1, dtype=torch.float64)  # (n, m)
    total = relevant.sum(1)
    has = total > 0
    average_precision = (precision * relevant).sum(1)[has] / total[has]
    return {
        "precision_at_k": float(relevant[:, :k].mean()),
        "mean_average_precision": float(average_precision.mean()),
    }
