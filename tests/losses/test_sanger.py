"""NestedLoRA's Sanger-type deflation (``deflation="sanger"``): the pseudo-gradient it applies, its fixed
points at the NestedLoRA optimum and its options (dense recovery: test_control_variate.py)."""

from __future__ import annotations

import pytest
import torch

from neuralsvd import NestedLoRA
from neuralsvd.losses.nested_lora import sanger_coefficients

F64 = torch.float64


def _dense(n: int, top: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A symmetric ``A = Q diag(λ) Qᵀ`` (``(Tf)_i = Σ_j A_ij f_j`` on indices: self-adjoint for the uniform
    measure scaled by n) with the given leading eigenvalues; returns ``A``, ``λ`` and ``Q``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    lam = torch.cat([torch.tensor(top, dtype=F64), 0.2 * torch.rand(n - len(top), dtype=F64, generator=g)])
    return (q * lam) @ q.T, lam, q


def _pseudo_gradient(f: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The full-batch Sanger pseudo-gradient by hand: column k is
    ``(4/n) [-Tf_k + Σ_{m<k} f_m ⟨f_m, Tf_k⟩/‖f_m‖² + f_k ‖f_k‖²]`` with ``⟨u, v⟩ = mean(u v)``."""
    n, L = f.shape
    tf = a @ f  # (n, L), T acting on each column
    out = -tf.clone()
    for k in range(L):
        for m in range(k):
            out[:, k] += f[:, m] * (f[:, m] * tf[:, k]).mean() / (f[:, m] ** 2).mean()
        out[:, k] += f[:, k] * (f[:, k] ** 2).mean()
    return 4 * out / n


def test_pseudo_gradient_is_the_stated_rule():
    n, L = 12, 3
    a, _, _ = _dense(n, [3.0, 2.0, 1.0])
    f = torch.randn(n, L, dtype=F64, generator=torch.Generator().manual_seed(1))
    loss = NestedLoRA(L, deflation="sanger", unbiased=False, control_variate=False)
    t = f.clone().requires_grad_(True)
    loss(t, (a @ t).detach()).loss.backward()
    torch.testing.assert_close(t.grad, _pseudo_gradient(f, a), rtol=1e-12, atol=1e-14)


def test_fixed_point_is_the_nestedlora_optimum():
    """At ``f_l = sqrt(λ_l) φ_l`` (top eigenvectors, orthonormal in the mean) the pseudo-gradient vanishes and
    the Sanger coefficients are diagonal."""
    n, L = 10, 3
    a, lam, q = _dense(n, [3.0, 2.0, 1.0])
    phi = q[:, :L] * n**0.5  # (Tφ)_i = Σ_j A_ij φ_j = λ φ_i, mean(φ²) = 1
    f = phi * lam[:L].sqrt()
    torch.testing.assert_close(_pseudo_gradient(f, a), torch.zeros(n, L, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(sanger_coefficients(f.T @ (a @ f) / n, f.T @ f / n), torch.diag(lam[:L]), atol=1e-12, rtol=0)


def test_sanger_deflation_does_not_depend_on_the_leading_norm():
    """Mode 1 carries a component ``ε φ_0``; the leading mode has the right shape but its norm is off by a
    factor ``c``. Sanger's update of mode 1 along ``φ_0`` is the same for every ``c`` (the projection of
    ``T f_1`` on ``f_0`` is removed exactly); the NestedLoRA gradient's is not (it deflates by ``c² λ_0``)."""
    n, L, eps = 10, 2, 0.1
    a, lam, q = _dense(n, [3.0, 2.0])
    phi = q[:, :L] * n**0.5
    along = {}
    for deflation in ("sanger", "lora"):
        for c in (1.0, 1.3):
            f = torch.stack([c * lam[0].sqrt() * phi[:, 0], lam[1].sqrt() * phi[:, 1] + eps * phi[:, 0]], 1)
            loss = NestedLoRA(L, deflation=deflation, unbiased=False, control_variate=False)
            t = f.clone().requires_grad_(True)
            loss(t, (a @ t).detach()).loss.backward()
            along[deflation, c] = float((t.grad[:, 1] * phi[:, 0]).mean())
    assert along["sanger", 1.0] == pytest.approx(along["sanger", 1.3], rel=1e-12)
    assert along["lora", 1.3] > 1.5 * along["lora", 1.0] > 0  # too strong a deflation pushes away from φ_0


def test_options():
    with pytest.raises(ValueError, match="deflation"):
        NestedLoRA(2, deflation="gha")
    with pytest.raises(ValueError, match="sequential"):
        NestedLoRA(2, nesting="joint", deflation="sanger")
    f = torch.randn(8, 2)
    with pytest.raises(NotImplementedError, match="EVD"):
        NestedLoRA(2, deflation="sanger").svd(f, f, f, f)
