"""Value, gradient and Laplacian of models (forward jets, nested jvp, finite differences) against
torch.autograd Hessians and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from neuralsvd.models import ACTIVATIONS, MLP, ParallelMLP
from neuralsvd.numerics.autodiff import laplacian
from neuralsvd.operators.schrodinger import _hermite_functions

F64 = torch.float64


def _model(cls, d, L, activation, fourier_features, envelope, box):
    torch.manual_seed(0)
    model = cls(d, L, hidden=(6, 5), activation=activation, fourier_features=fourier_features, fourier_scale=0.5,
                envelope=envelope, envelope_scale=2.0, box=box).double()
    # non-zero biases so that every layer's affine part is exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.3)
    return model


def _points(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.rand(n, d, dtype=F64, generator=g) - 2  # inside the box [-5, 5]^d
    return x[x.norm(dim=1) > 0.3]  # away from the envelope's kink at 0


def _autograd_reference(model, x):
    """Per-sample, per-output Jacobian and Hessian trace by torch.autograd.functional."""
    n, d = x.shape
    L = model(x[:1]).shape[1]
    grads = torch.empty(n, d, L, dtype=F64)
    laps = torch.empty(n, L, dtype=F64)
    for i in range(n):
        jac = torch.autograd.functional.jacobian(lambda xi: model(xi[None])[0], x[i])  # (L, d)
        grads[i] = jac.T
        for l in range(L):
            hess = torch.autograd.functional.hessian(lambda xi, l=l: model(xi[None])[0, l], x[i])
            laps[i, l] = torch.trace(hess)
    return grads, laps


MODEL_GRID = [
    pytest.param(cls, act, ff, env, box, id=f"{cls.__name__}-{act}-ff{ff}-{'env' if env else 'noenv'}-box{box}")
    for cls in (ParallelMLP, MLP)
    for act in ("softplus", "tanh", "silu", "sin")
    for ff in (0, 8)
    for env in (False, True)
    for box in (None, 5.0)
]


@pytest.mark.parametrize("cls,activation,fourier_features,envelope,box", MODEL_GRID)
def test_jet_laplacian_matches_autograd_hessian_trace(cls, activation, fourier_features, envelope, box):
    d, L = 3, 2
    model = _model(cls, d, L, activation, fourier_features, envelope, box)
    x = _points(4, d)
    value, grad, lap = laplacian(model, x)
    ref_grad, ref_lap = _autograd_reference(model, x)
    torch.testing.assert_close(value, model(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lap, ref_lap, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [ParallelMLP, MLP])
@pytest.mark.parametrize("d", [1, 2])
def test_jet_laplacian_low_dimensions_with_envelope_and_box(cls, d):
    """The envelope's ∇r, Δr = (d-1)/r and the box factor's product rule depend on d."""
    model = _model(cls, d, 3, "softplus", 4, True, 3.0)
    x = _points(5, d, seed=1)
    value, grad, lap = laplacian(model, x)
    ref_grad, ref_lap = _autograd_reference(model, x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lap, ref_lap, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [ParallelMLP, MLP])
@pytest.mark.parametrize("d,fourier_features,envelope", [(1, 0, False), (2, 0, True), (3, 4, False)])
def test_jet_laplacian_with_radial_input(cls, d, fourier_features, envelope):
    """``|x|`` as an input: ∇r = x/r, Δr = (d-1)/r pushed through the layers (and with an envelope)."""
    torch.manual_seed(0)
    model = cls(d, 2, hidden=(6, 5), fourier_features=fourier_features, fourier_scale=0.5, envelope=envelope,
                envelope_scale=2.0, radial=True).double()
    assert model.first_weight.shape[0] == (2 * fourier_features or d) + 1
    x = _points(5, d, seed=2)
    value, grad, lap = laplacian(model, x)
    ref_grad, ref_lap = _autograd_reference(model, x)
    torch.testing.assert_close(value, model(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lap, ref_lap, rtol=1e-10, atol=1e-10)


def test_radial_input_represents_a_cusp():
    """A radial network can be exactly ``r`` (weights on the radius only): its Laplacian is ``(d-1)/r``,
    which no smooth function of ``x`` has."""
    model = ParallelMLP(2, 1, hidden=(1,), activation="tanh", radial=True).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.first_weight[2, 0, 0] = 1.0  # the radius channel
        model.out_weight.fill_(1.0)
    x = _points(6, 2, seed=3)
    r = x.norm(dim=1)
    value, _, lap = laplacian(model, x)
    t = torch.tanh(r)
    torch.testing.assert_close(value[:, 0], t, rtol=1e-12, atol=1e-12)
    # Δ tanh(r) = tanh''(r) + tanh'(r) / r in 2D
    torch.testing.assert_close(lap[:, 0], -2 * t * (1 - t**2) + (1 - t**2) / r, rtol=1e-10, atol=1e-10)


GENERIC_GRID = [
    pytest.param(cls, act, ff, env, box, id=f"{cls.__name__}-{act}-ff{ff}-{'env' if env else 'noenv'}-box{box}")
    for cls in (ParallelMLP, MLP)
    for act in ("softplus", "sin")
    for ff, env, box in ((0, False, None), (8, True, 5.0))
]


@pytest.mark.parametrize("cls,activation,fourier_features,envelope,box", GENERIC_GRID)
def test_generic_nested_jvp_path_matches_jet(cls, activation, fourier_features, envelope, box):
    d = 3
    model = _model(cls, d, 3, activation, fourier_features, envelope, box)
    x = _points(6, d)
    v_jet, g_jet, l_jet = laplacian(model, x)
    v, g, lap = laplacian(lambda y: model(y), x)  # a plain callable: no .jet
    torch.testing.assert_close(v, v_jet, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_jet, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lap, l_jet, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls,activation,fourier_features,envelope,box", GENERIC_GRID)
def test_finite_differences_match_jet(cls, activation, fourier_features, envelope, box):
    d = 3
    model = _model(cls, d, 3, activation, fourier_features, envelope, box)
    x = _points(6, d)
    v_jet, g_jet, l_jet = laplacian(model, x)
    v, g, lap = laplacian(model, x, method="fd", eps=1e-3)
    torch.testing.assert_close(v, v_jet, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_jet, rtol=1e-4, atol=1e-4 * g_jet.abs().max().item())
    torch.testing.assert_close(lap, l_jet, rtol=1e-4, atol=1e-4 * l_jet.abs().max().item())


def test_jet_runs_without_building_a_graph():
    model = _model(ParallelMLP, 2, 2, "tanh", 0, False, None)
    x = _points(4, 2)
    with torch.no_grad():
        _, _, lap = laplacian(model, x)
    assert not lap.requires_grad
    _, ref_lap = _autograd_reference(model, x)
    torch.testing.assert_close(lap, ref_lap, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_autograd(name):
    h = torch.linspace(-4, 4, 41, dtype=F64, requires_grad=True)
    s0 = ACTIVATIONS[name].value(h)
    s1, s2 = ACTIVATIONS[name].derivatives(h)
    (d1,) = torch.autograd.grad(s0.sum(), h, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), h)
    torch.testing.assert_close(s1, d1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, d2, rtol=1e-12, atol=1e-12)


# --- closed forms ---------------------------------------------------------------------------------------

def _gaussian(x):
    return torch.exp(-0.5 * (x * x).sum(1, keepdim=True))


@pytest.mark.parametrize("method,tol", [("exact", 1e-12), ("fd", 1e-5)])
def test_gaussian_laplacian_closed_form(method, tol):
    d = 3
    x = torch.randn(7, d, dtype=F64)
    value, grad, lap = laplacian(_gaussian, x, method=method, eps=1e-3)
    r2 = (x * x).sum(1, keepdim=True)
    e = torch.exp(-0.5 * r2)
    torch.testing.assert_close(value, e, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(grad, (-x * e).unsqueeze(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(lap, (r2 - d) * e, rtol=tol, atol=tol)


@pytest.mark.parametrize("omega", [1.0, 1.7])
def test_hermite_function_laplacian_closed_form(omega):
    kmax = 6
    x = torch.linspace(-3.5, 3.5, 15, dtype=F64).unsqueeze(1)
    _, _, lap = laplacian(lambda y: _hermite_functions(y[:, 0], omega, kmax), x)
    h = _hermite_functions(x[:, 0], omega, kmax)
    k = torch.arange(kmax + 1, dtype=F64)
    expected = (omega**2 * x * x - omega * (2 * k + 1)) * h
    torch.testing.assert_close(lap, expected, rtol=1e-10, atol=1e-12)


def test_hermite_functions_orthonormal():
    omega, kmax = 1.3, 7
    from neuralsvd.numerics.quadrature import box

    q = box([12.0], 16, 24)
    h = _hermite_functions(q.points[:, 0], omega, kmax)
    torch.testing.assert_close(q.inner(h, h), torch.eye(kmax + 1, dtype=F64), rtol=0, atol=1e-12)
    # k = 0 against the closed form (ω/π)^¼ exp(-ω x²/2)
    x = q.points[:, 0]
    torch.testing.assert_close(h[:, 0], (omega / math.pi) ** 0.25 * torch.exp(-0.5 * omega * x * x))


def test_laplacian_argument_errors():
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        laplacian(_gaussian, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="unknown Laplacian method 'spectral'; valid: 'exact', 'fd'"):
        laplacian(_gaussian, torch.zeros(3, 2, dtype=F64), method="spectral")


# --- stochastic (Hutchinson) estimates ------------------------------------------------------------------

def _single_probe_samples(model, x, method, draws):
    """``draws`` independent one-probe estimates per point: gradients ``(draws, n, d, L)``, Laplacians
    ``(draws, n, L)`` (the points repeated, so one call)."""
    n, d = x.shape
    _, grad, lap = laplacian(model, x.repeat(draws, 1), method=method, probes=1)
    return grad.view(draws, n, d, -1), lap.view(draws, n, -1)


@pytest.mark.parametrize("method", ["hutchinson", "hutchinson-gaussian", "hutchinson-axes"])
def test_stochastic_laplacian_is_unbiased(method):
    """Mean of 4000 one-probe estimates within 5 standard errors (from the sample variance) of the exact
    jet, for the Laplacian and the gradient, at every point and output."""
    d, draws = 5, 4000
    model = _model(ParallelMLP, d, 2, "softplus", 0, True, None)
    x = _points(4, d, seed=4)
    _, grad, lap = laplacian(model, x)
    torch.manual_seed(0)
    g_s, l_s = _single_probe_samples(model, x, method, draws)
    for est, exact in ((l_s, lap), (g_s, grad)):
        mean, err = est.mean(0), est.std(0) / math.sqrt(draws)
        assert float(err.max()) > 0  # genuinely random (axis probes: unless H is diagonal)
        assert bool(((mean - exact).abs() <= 5 * err + 1e-12).all()), float(((mean - exact).abs() / err).max())


def test_rademacher_variance_matches_the_off_diagonal_hessian():
    """One Rademacher probe: Var[vᵀHv] = 2 Σ_{i≠j} H_ij² (autograd Hessian), within 10% at 20000 draws."""
    d, draws = 4, 20000
    model = _model(ParallelMLP, d, 1, "tanh", 0, False, None)
    x = _points(1, d, seed=5)
    hess = torch.autograd.functional.hessian(lambda xi: model(xi[None])[0, 0], x[0])
    expected = 2 * ((hess**2).sum() - (hess.diagonal() ** 2).sum())
    torch.manual_seed(1)
    _, l_s = _single_probe_samples(model, x, "hutchinson", draws)
    assert float(l_s[:, 0, 0].var()) == pytest.approx(float(expected), rel=0.1)


@pytest.mark.parametrize("cls", [ParallelMLP, MLP])
def test_axis_probes_are_exact_with_all_d_axes(cls):
    d = 4
    model = _model(cls, d, 3, "silu", 8, True, 5.0)
    x = _points(5, d, seed=6)
    value, grad, lap = laplacian(model, x)
    v_s, g_s, l_s = laplacian(model, x, method="hutchinson-axes", probes=d)
    torch.testing.assert_close(v_s, value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_s, grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(l_s, lap, rtol=1e-10, atol=1e-10)


def test_stochastic_laplacian_rejects_bad_probes():
    model = _model(ParallelMLP, 3, 1, "tanh", 0, False, None)
    x = _points(2, 3)
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        laplacian(model, x, method="hutchinson", probes=0)
    with pytest.raises(ValueError, match="probes must be ≤ d = 3"):
        laplacian(model, x, method="hutchinson-axes", probes=4)
    with pytest.raises(ValueError, match="valid: 'exact', 'fd', 'hutchinson'"):
        laplacian(model, x, method="stochastic")


def test_nested_lora_gradient_is_unbiased_under_the_stochastic_laplacian():
    """NestedLoRA is linear in Tf: its parameter gradient averaged over probe draws equals the gradient
    with the exact Laplacian (5 standard errors), and equals it exactly with all d axis probes."""
    from neuralsvd import NestedLoRA
    from neuralsvd.operators import HarmonicOscillator

    d, L, draws = 4, 3, 400
    model = _model(ParallelMLP, d, L, "softplus", 0, False, None)
    x = torch.randn(32, d, dtype=F64, generator=torch.Generator().manual_seed(7))

    def gradient(method, probes=1):
        op = HarmonicOscillator(d, laplacian=method, probes=probes).double()
        loss = NestedLoRA(L, control_variate=False)
        model.zero_grad()
        loss(*op.apply(model, x)).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    exact = gradient("exact")
    torch.testing.assert_close(gradient("hutchinson-axes", d), exact, rtol=1e-9, atol=1e-12)
    torch.manual_seed(2)
    samples = torch.stack([gradient("hutchinson") for _ in range(draws)])  # (draws, P)
    mean, err = samples.mean(0), samples.std(0) / math.sqrt(draws)
    assert float((samples - exact).abs().max()) > 1e-3 * float(exact.abs().max())  # each draw is noisy
    assert bool(((mean - exact).abs() <= 5 * err + 1e-12).all()), float(((mean - exact).abs() / err).max())


def test_neuralef_warns_under_the_stochastic_laplacian_unless_split():
    """NeuralEF's R_ij / R_ii deflation multiplies Tf by Tf moments (biased with a random Tf); its split
    form and NestedLoRA are linear in Tf and stay silent."""
    import warnings

    from neuralsvd import NestedLoRA, NeuralEF
    from neuralsvd.operators import HarmonicOscillator

    stochastic, exact = HarmonicOscillator(3, laplacian="hutchinson"), HarmonicOscillator(3)
    with pytest.warns(RuntimeWarning, match="NeuralEF\\(unbiased=False\\) is not linear in Tf"):
        NeuralEF(2).prepare(stochastic)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NeuralEF(2).prepare(exact)
        NeuralEF(2, unbiased=True).prepare(stochastic)
        NestedLoRA(2).prepare(stochastic)
