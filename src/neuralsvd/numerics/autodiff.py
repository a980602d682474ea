"""Second derivatives of vector-valued functions ``f: R^d -> R^L`` (value, gradient, Laplacian).

Four ways, all through :func:`laplacian`:

* ``"exact"`` on a model with ``value_and_jet(x)`` (the MLPs of :mod:`neuralsvd.models`) or ``jet(x)``:
  a forward pass that carries value, gradient and Laplacian through each layer ("forward Laplacian").
  Linear layers act on the stacked derivative channels in one batched matmul; activations use their
  first and second derivatives. No backward graph is built for the derivatives.
* ``"exact"`` on any other callable: forward-over-forward mode (``torch.func.jvp`` nested once per
  input coordinate, ``d`` passes in all, each covering every output at once; never a loop over outputs).
* ``"fd"``: central finite differences with step ``eps`` (``2d + 1`` evaluations), an option for
  functions that torch.func cannot trace.
* ``"hutchinson"`` (Rademacher probes), ``"hutchinson-gaussian"`` and ``"hutchinson-axes"``: unbiased
  stochastic estimates for large ``d`` (:func:`hutchinson`). ``k`` probe directions ``v`` per point with
  ``E[v vᵀ] = I``; one forward-over-forward jvp along each gives ``vᵀ∇f`` and ``vᵀ(∇²f)v``, so that
  ``Δf ≈ (1/k) Σ_j v_jᵀ(∇²f)v_j`` and ``∇f ≈ (1/k) Σ_j v_j (v_jᵀ∇f)``, both unbiased. The cost is about
  ``4k`` forward passes whatever ``d`` (the exact jet pushes ``d + 1`` channels). ``"hutchinson-axes"``
  draws ``k`` distinct coordinate axes per point, scaled by ``sqrt(d)``: exact at ``k = d``.
  Only updates linear in ``Tf`` stay unbiased with them: NestedLoRA's (and, as implemented here, SpIN's
  and split NeuralEF's), not the published NeuralEF's, whose deflation uses ratios of ``Tf`` moments.

A *jet* here is a tensor ``J`` of shape ``(d + 2, *batch, k)``: ``J[0]`` the value, ``J[1 : d + 1]``
the partial derivatives ``∂/∂x_i``, ``J[d + 1]`` the Laplacian ``Σ_i ∂²/∂x_i²``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._validation import check_positive_int

__all__ = ["LAPLACIAN_METHODS", "STOCHASTIC_METHODS", "directional_derivative", "hutchinson", "jet_input",
           "jet_product", "jet_split", "laplacian", "probe_directions", "value_and_derivatives"]

#: the stochastic methods of :func:`hutchinson` and the probe distribution each uses
STOCHASTIC_METHODS = {"hutchinson": "rademacher", "hutchinson-gaussian": "gaussian", "hutchinson-axes": "axes"}
#: every ``method`` of :func:`laplacian`
LAPLACIAN_METHODS = ("exact", "fd", *STOCHASTIC_METHODS)

Derivatives = tuple[Tensor, Tensor, Tensor]  # value (n, L), gradient (n, d, L), Laplacian (n, L)


def jet_input(x: Tensor) -> Tensor:
    """The jet of the identity map at ``x`` (n, d): shape ``(d + 2, n, d)``."""
    n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, n, d)  # (d, n, d)
    return torch.cat([x.unsqueeze(0), eye, torch.zeros_like(x).unsqueeze(0)], 0)


def jet_split(jet: Tensor) -> Derivatives:
    """``(value, gradient, Laplacian)`` of a jet ``(d + 2, n, k)`` as ``((n, k), (n, d, k), (n, k))``."""
    return jet[0], jet[1:-1].movedim(0, 1), jet[-1]


def jet_product(a: Tensor, b: Tensor) -> Tensor:
    """Product rule for two broadcastable jets: ``Δ(ab) = aΔb + bΔa + 2∇a·∇b``."""
    va, ga, la = a[0], a[1:-1], a[-1]
    vb, gb, lb = b[0], b[1:-1], b[-1]
    lap = va * lb + vb * la + 2 * (ga * gb).sum(0)
    return torch.cat([(va * vb).unsqueeze(0), va * gb + vb * ga, lap.unsqueeze(0)], 0)


def _exact_functional(f: Callable[[Tensor], Tensor], x: Tensor) -> Derivatives:
    """Forward-over-forward: for each axis e_i, d/dt f(x + t e_i) and d²/dt² in one nested jvp."""
    grads, lap = [], None
    value = f(x)
    for i in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, i] = 1

        def first(y: Tensor, e: Tensor = e) -> Tensor:
            return torch.func.jvp(f, (y,), (e,))[1]

        d1, d2 = torch.func.jvp(first, (x,), (e,))
        grads.append(d1)
        lap = d2 if lap is None else lap + d2
    return value, torch.stack(grads, 1), lap


def _finite_differences(f: Callable[[Tensor], Tensor], x: Tensor, eps: float) -> Derivatives:
    """Central differences: ``(f(x+εe) - f(x-εe)) / 2ε`` and ``(f(x+εe) - 2f(x) + f(x-εe)) / ε²``."""
    n, d = x.shape
    shifts = eps * torch.eye(d, dtype=x.dtype, device=x.device)  # (d, d)
    xs = torch.cat([x.unsqueeze(0), x + shifts[:, None], x - shifts[:, None]], 0)  # (2d+1, n, d)
    ys = f(xs.reshape(-1, d)).reshape(2 * d + 1, n, -1)
    value, plus, minus = ys[0], ys[1 : d + 1], ys[d + 1 :]
    grad = ((plus - minus) / (2 * eps)).movedim(0, 1)  # (n, d, L)
    lap = ((plus + minus).sum(0) - 2 * d * value) / eps**2
    return value, grad, lap


def probe_directions(n: int, d: int, probes: int, distribution: str, dtype: torch.dtype,
                     device: torch.device | str | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``probes`` directions per point, ``(probes, n, d)``, each with ``E[v vᵀ] = I``.

    ``"rademacher"``: entries ±1; ``"gaussian"``: standard normal; ``"axes"``: ``probes ≤ d`` distinct
    coordinate axes per point (uniformly at random), scaled by ``sqrt(d)``, so that
    ``(1/k) Σ_j v_j v_jᵀ`` is ``I`` exactly when ``probes = d``.
    """
    shape = (probes, n, d)
    if distribution == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    if distribution == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if distribution == "axes":
        if probes > d:
            raise ValueError(f"'axes' probes are distinct coordinate axes: probes must be ≤ d = {d}, got {probes}")
        axes = torch.rand(n, d, generator=generator, device=device).argsort(1)[:, :probes].T  # (probes, n)
        return torch.nn.functional.one_hot(axes, d).to(dtype) * math.sqrt(d)
    raise ValueError(f"unknown probe distribution {distribution!r}; valid: 'rademacher', 'gaussian', 'axes'")


def hutchinson(f: Callable[[Tensor], Tensor], x: Tensor, probes: int = 1, distribution: str = "rademacher",
               generator: torch.Generator | None = None) -> Derivatives:
    """Unbiased stochastic gradient and Laplacian of ``f`` at ``x (n, d)`` from ``probes`` directions per
    point (see :func:`probe_directions`): ``(value (n, L), ∇f estimate (n, d, L), Δf estimate (n, L))``.

    ``Δf ≈ (1/k) Σ_j v_jᵀ (∇²f) v_j`` (Hutchinson's trace estimator) and ``∇f ≈ (1/k) Σ_j v_j (v_jᵀ ∇f)``:
    both directional derivatives come from one forward-over-forward ``torch.func.jvp`` along ``v_j``,
    on the ``k n`` points stacked as one batch. The value is exact. Probes are drawn from
    ``generator`` (default: torch's global generator).
    """
    return (f(x), *_directional_estimates(f, x, probes, distribution, generator))


def _directional_estimates(f: Callable[[Tensor], Tensor], x: Tensor, probes: int, distribution: str,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The gradient ``(n, d, L)`` and Laplacian ``(n, L)`` estimates of :func:`hutchinson`."""
    check_positive_int("probes", probes)
    n, d = x.shape
    v = probe_directions(n, d, probes, distribution, x.dtype, x.device, generator)  # (k, n, d)
    xs, vs = x.unsqueeze(0).expand(probes, n, d).reshape(-1, d), v.reshape(-1, d)  # (k n, d)

    def first(y: Tensor) -> Tensor:
        return torch.func.jvp(f, (y,), (vs,))[1]

    d1, d2 = torch.func.jvp(first, (xs,), (vs,))  # (k n, L) each: vᵀ∇f and vᵀ(∇²f)v
    d1, d2 = d1.view(probes, n, -1), d2.view(probes, n, -1)
    grad = torch.einsum("knd,knl->ndl", v, d1) / probes  # (n, d, L)
    return grad, d2.mean(0)


def directional_derivative(f: Callable[[Tensor], Tensor], x: Tensor, w: Tensor) -> Tensor:
    """``w(x)ᵀ ∇f(x)`` exactly, one forward-mode jvp: ``x (n, d)``, ``w (n, d)`` -> ``(n, L)``."""
    return torch.func.jvp(f, (x,), (w,))[1]


def laplacian(f: Callable[[Tensor], Tensor], x: Tensor, method: str = "exact", eps: float = 1e-2,
              probes: int = 1) -> Derivatives:
    """Value, gradient and Laplacian of ``f`` at ``x``.

    Args:
        f: callable ``(n, d) -> (n, L)``; its ``value_and_jet`` or ``jet`` method is used for ``"exact"``.
        x: points, ``(n, d)``.
        method: ``"exact"`` (default), ``"fd"`` (central finite differences with step ``eps``) or one of
            the unbiased stochastic estimates of :data:`STOCHASTIC_METHODS` with ``probes`` directions per
            point (:func:`hutchinson`).

    Returns:
        ``(value (n, L), gradient (n, d, L), laplacian (n, L))``. Whether a graph is kept follows the
        caller's grad mode (the library calls it under ``torch.no_grad``).
    """
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(x.shape)}")
    if method in STOCHASTIC_METHODS:
        return hutchinson(f, x, probes, STOCHASTIC_METHODS[method])
    if method == "exact":
        if callable(getattr(f, "value_and_jet", None)):
            return jet_split(f.value_and_jet(x)[1])
        if callable(getattr(f, "jet", None)):
            return jet_split(f.jet(x))
        return _exact_functional(f, x)
    if method == "fd":
        return _finite_differences(f, x, eps)
    raise ValueError(f"unknown Laplacian method {method!r}; valid: {', '.join(map(repr, LAPLACIAN_METHODS))}")


def value_and_derivatives(f: Callable[[Tensor], Tensor], x: Tensor, method: str = "exact", eps: float = 1e-2,
                          probes: int = 1) -> tuple[Tensor, Derivatives]:
    """``f(x)`` with its autograd graph, and ``(value, gradient, Laplacian)`` without one.

    Models with ``value_and_jet`` share one pass between the two; otherwise ``f`` runs once with the
    graph and :func:`laplacian` once under ``torch.no_grad``.
    """
    if method == "exact" and callable(getattr(f, "value_and_jet", None)):
        fx, jet = f.value_and_jet(x)
        return fx, jet_split(jet)
    fx = f(x)
    with torch.no_grad():
        if method in STOCHASTIC_METHODS:  # the value is fx: only the directional passes remain
            return fx, (fx.detach(), *_directional_estimates(f, x, probes, STOCHASTIC_METHODS[method]))
        return fx, laplacian(f, x, method, eps, probes)
