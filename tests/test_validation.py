"""Bad input fails early with a clear message (ValueError / TypeError naming the problem)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import neuralsvd as nsvd
from neuralsvd.models import MLP, ParallelMLP, Tabular
from neuralsvd.numerics.sampling import Gaussian, Index, Mixture, TruncatedGaussian, UniformBox
from neuralsvd.operators import DenseOperator, HarmonicOscillator, Hydrogen2D, Schrodinger

F64 = torch.float64
FAST = dict(steps=2, progress=False, eval_batches=1, eval_batch_size=8)


class _Flatten(nn.Module):
    """Wraps a model and returns its first column only: output (n,) instead of (n, L)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[:, 0]


def _mlp(d=2, L=2):
    return ParallelMLP(d, L, hidden=(4,))


def _eye(n=6):
    return DenseOperator(torch.eye(n, dtype=F64) + 0.1 * torch.ones(n, n, dtype=F64))


# --- model output shape -----------------------------------------------------------------------------------

def test_fit_rejects_model_returning_vector_on_dense_operator():
    with pytest.raises(ValueError, match=r"outputs of shape \(n, L\); got \(6,\)"):
        nsvd.fit(_Flatten(Tabular(6, 2)), _eye(), nsvd.NestedLoRA(2), batch_size=6, **FAST)


def test_fit_rejects_model_returning_vector_on_schrodinger():
    with pytest.raises(ValueError, match=r"outputs of shape \(n, L\)"):
        nsvd.fit(_Flatten(_mlp()), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=8, **FAST)


@pytest.mark.parametrize("op_factory,model_factory", [
    (lambda: _eye(), lambda: Tabular(6, 3)),
    (lambda: HarmonicOscillator(2), lambda: _mlp(L=3)),
    (lambda: HarmonicOscillator(2), lambda: MLP(2, 1, hidden=(4,))),
])
def test_fit_rejects_wrong_number_of_modes(op_factory, model_factory):
    with pytest.raises(ValueError, match=r"expects model outputs of shape \(n, L\) = \(n, 2\)"):
        nsvd.fit(model_factory(), op_factory(), nsvd.NestedLoRA(2), batch_size=6, **FAST)


def test_fit_rejects_model_with_wrong_input_dimension():
    with pytest.raises(ValueError, match=r"expected x of shape \(n, 3\), got \(8, 2\)"):
        nsvd.fit(_mlp(d=3), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=8, **FAST)


# --- num_modes / batch size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("factory,match", [
    (lambda: nsvd.NestedLoRA(0), "num_modes must be a positive integer"),
    (lambda: ParallelMLP(2, 0), "num_modes must be a positive integer, got 0"),
    (lambda: MLP(2, -1), "num_modes must be a positive integer, got -1"),
    (lambda: Tabular(5, 0), "num_modes must be a positive integer, got 0"),
    (lambda: Tabular(0, 2), "num_points must be a positive integer, got 0"),
])
def test_num_modes_must_be_positive(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_batch_size_too_small_to_split():
    with pytest.raises(ValueError, match=r"batch_size=1 is too small: NestedLoRA needs at least 2"):
        nsvd.fit(_mlp(), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=1, **FAST)
    # the biased estimate works with one point
    result = nsvd.fit(_mlp(), HarmonicOscillator(2), nsvd.NestedLoRA(2, unbiased=False), batch_size=1, **FAST)
    assert result.eigenvalues.shape == (2,)


# --- potentials ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("potential", [
    lambda x: torch.full(x.shape[:1], float("nan")),
    lambda x: torch.where(x[:, 0] > 0, torch.inf, 0.0) * torch.ones_like(x[:, 0]),
])
def test_non_finite_potential(potential):
    with pytest.raises(ValueError, match="potential returned non-finite values"):
        nsvd.fit(_mlp(), Schrodinger(potential, 2), nsvd.NestedLoRA(2), batch_size=8, **FAST)


@pytest.mark.parametrize("potential,got", [(lambda x: x**2, r"\(\d+, 2\)"), (lambda x: (x**2).sum(1, keepdim=True), r"\(\d+, 1\)"),
                                           (lambda x: [0.0] * x.shape[0], "list")])
def test_potential_wrong_shape(potential, got):  # at construction (the default sampler probes V) or in fit
    with pytest.raises(ValueError, match=r"potential must map x of shape \(n, 2\) to \(n,\) = \(\d+,\); got " + got):
        nsvd.fit(_mlp(), Schrodinger(potential, 2), nsvd.NestedLoRA(2), batch_size=8, **FAST)


# --- fit arguments -------------------------------------------------------------------------------------------

def test_unknown_optimizer_lists_valid():
    with pytest.raises(ValueError, match=r"unknown optimizer 'lbfgs'; valid: adam, rmsprop, sgd"):
        nsvd.fit(_mlp(), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=4, optimizer="lbfgs", **FAST)


def test_unknown_schedule_lists_valid():
    with pytest.raises(ValueError, match=r"unknown schedule 'step'; valid: stable-cosine, cosine, constant"):
        nsvd.fit(_mlp(), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=4, schedule="step", **FAST)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "lr must be a positive finite number"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(steps=-1), "steps must be an integer >= 0"),
    (dict(steps=2.0), "steps must be an integer >= 0"),
    (dict(warmup=-1), "warmup must be an integer >= 0"),
    (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
])
def test_bad_fit_numbers(kwargs, match):
    args = {**FAST, **kwargs}
    with pytest.raises(ValueError, match=match):
        nsvd.fit(_mlp(), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=4, **args)


@pytest.mark.parametrize("kwargs", [dict(log_every=0), dict(eval_batches=0)])
def test_bad_logging_and_eval_counts(kwargs):
    args = {**FAST, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        nsvd.fit(_mlp(), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=4, **args)


def test_non_symmetric_dense_needs_model_pair():
    a = torch.arange(36, dtype=F64).reshape(6, 6)
    with pytest.raises(ValueError, match="DenseOperator is not self-adjoint: pass a pair of models"):
        nsvd.fit(Tabular(6, 2), DenseOperator(a), nsvd.NestedLoRA(2), batch_size=6, **FAST)
    with pytest.raises(ValueError, match="DenseOperator is not self-adjoint"):
        nsvd.fit(Tabular(6, 2), DenseOperator(torch.ones(5, 6, dtype=F64)), nsvd.NestedLoRA(2), batch_size=6, **FAST)


@pytest.mark.parametrize("model,op,loss,exc,match", [
    (lambda: _mlp(), lambda: "op", lambda: nsvd.NestedLoRA(2), TypeError, "operator must be a neuralsvd"),
    (lambda: _mlp(), lambda: HarmonicOscillator(2), lambda: nn.MSELoss(), TypeError, "loss must be a neuralsvd SpectralLoss"),
    (lambda: (lambda x: x), lambda: HarmonicOscillator(2), lambda: nsvd.NestedLoRA(2), TypeError, "model must be a torch.nn.Module"),
    (lambda: (_mlp(), _mlp(), _mlp()), lambda: HarmonicOscillator(2), lambda: nsvd.NestedLoRA(2), ValueError,
     "exactly two models"),
    (lambda: (_mlp(), _mlp()), lambda: HarmonicOscillator(2), lambda: nsvd.NestedLoRA(2), NotImplementedError,
     "HarmonicOscillator has no SVD form"),
])
def test_fit_type_errors(model, op, loss, exc, match):
    with pytest.raises(exc, match=match):
        nsvd.fit(model(), op(), loss(), batch_size=4, **FAST)


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        nsvd.fit(_mlp(), HarmonicOscillator(2), nsvd.NestedLoRA(2), batch_size=4, resume=True,
                 checkpoint_dir=tmp_path, **FAST)


def test_divergence_is_reported():
    model = Tabular(6, 2)
    with torch.no_grad():
        model.table.fill_(float("nan"))
    with pytest.raises(nsvd.DivergenceError, match="non-finite loss"):
        nsvd.fit(model, _eye(), nsvd.NestedLoRA(2), batch_size=6, log_every=1, **FAST)


# --- constructors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory,match", [
    (lambda: Gaussian(0), "dim must be a positive integer, got 0"),
    (lambda: Gaussian(2, std=-1.0), "std must be a positive finite float"),
    (lambda: Gaussian(2, std=0.0), "std must be a positive finite float"),
    (lambda: Gaussian(2, std=float("nan")), "std must be a positive finite float"),
    (lambda: Gaussian(2, std=[1.0, 2.0, 3.0]), "std must be a positive finite float or a sequence of 2"),
    (lambda: TruncatedGaussian(2, std=-2.0, bound=1.0), "std must be a positive finite float"),
    (lambda: TruncatedGaussian(2, std=2.0, bound=0.0), "bound must be a positive finite number"),
    (lambda: UniformBox(0, 1.0), "dim must be a positive integer"),
    (lambda: UniformBox(2, -1.0), "bound must be a positive finite number"),
    (lambda: Mixture([]), "at least one component"),
    (lambda: Mixture([Gaussian(1), Gaussian(2)]), "same dim"),
    (lambda: Mixture([Gaussian(2), Gaussian(2)], [1.0, -1.0]), "weights must be 2 positive numbers"),
    (lambda: Mixture([Gaussian(2), Gaussian(2)], [1.0]), "weights must be 2 positive numbers"),
    (lambda: Index(0), "num_points must be a positive integer"),
    (lambda: Gaussian(2).sample(0), "n must be a positive integer"),
])
def test_bad_sampler_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize("factory", [
    pytest.param(lambda: Mixture([Gaussian(2), Gaussian(2)], [math.inf, 1.0]), id="mixture-inf-weight"),
    pytest.param(lambda: Gaussian(2, std=math.inf), id="gaussian-inf-std"),
    pytest.param(lambda: UniformBox(2, math.inf), id="uniform-inf-bound"),
])
def test_infinite_sampler_parameters_rejected(factory):
    with pytest.raises(ValueError, match="finite|positive"):
        factory()


@pytest.mark.parametrize("cls", [ParallelMLP, MLP])
@pytest.mark.parametrize("kwargs,match", [
    (dict(in_features=0), "in_features must be a positive integer, got 0"),
    (dict(activation="relu"), r"unknown activation 'relu'; valid: \['silu', 'sin', 'softplus', 'tanh'\]"),
    (dict(hidden=()), "hidden must be a non-empty sequence of positive widths"),
    (dict(hidden=(4, 0)), "hidden must be a non-empty sequence of positive widths"),
    (dict(fourier_features=-1), "fourier_features must be an integer >= 0"),
    (dict(box=0.0), "box must be a positive half-width, a pair"),
    (dict(box=-3.0), "box must be a positive half-width, a pair"),
    (dict(box=(1.0, 0.0)), r"pair \(low, high\) with low < high"),
    (dict(box=(0.0, 1.0, 2.0)), r"pair \(low, high\) with low < high"),
])
def test_bad_model_arguments(cls, kwargs, match):
    args = {"in_features": 2, "num_modes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(**args)


@pytest.mark.parametrize("scale", [0.0, -1.0, (1.0, 0.0), (1.0, 2.0, 3.0)])
def test_bad_envelope_scale(scale):
    with pytest.raises(ValueError, match="envelope_scale"):
        ParallelMLP(2, 2, envelope=True, envelope_scale=scale)


def test_per_mode_envelope_scales():
    model = ParallelMLP(2, 3, hidden=(4,), envelope=True, envelope_scale=(1.0, 2.0, 5.0))
    torch.testing.assert_close(model.log_envelope_scale.exp().detach(), torch.tensor([1.0, 2.0, 5.0]))


def test_non_integer_fourier_features():
    with pytest.raises(ValueError, match="fourier_features"):
        ParallelMLP(2, 2, fourier_features=1.5)


def test_tabular_rejects_float_indices():
    with pytest.raises(ValueError, match="Tabular expects integer indices"):
        Tabular(3, 2)(torch.zeros(2))


@pytest.mark.parametrize("factory,exc,match", [
    (lambda: Schrodinger("V", 2), TypeError, "potential must be a callable"),
    (lambda: Schrodinger(lambda x: x[:, 0], 0), ValueError, "dim must be a positive integer"),
    (lambda: Schrodinger(lambda x: x[:, 0], 2, scale=0.0), ValueError, "scale must be a positive finite number"),
    (lambda: Schrodinger(lambda x: x[:, 0], 2, kinetic=-1.0), ValueError, "kinetic must be a positive finite number"),
    (lambda: Schrodinger(lambda x: x[:, 0], 2, laplacian="spectral"), ValueError, "unknown laplacian method 'spectral'"),
    (lambda: Schrodinger(lambda x: x[:, 0], 2, sampler=Gaussian(3)), ValueError, "sampler has dim 3, operator has dim 2"),
    (lambda: HarmonicOscillator(2, omega=[1.0, 0.0]), ValueError, "omega must be a positive float or 2"),
    (lambda: HarmonicOscillator(3, omega=[1.0, 2.0]), ValueError, "omega must be a positive float or 3"),
    (lambda: HarmonicOscillator(0), ValueError, "dim must be a positive integer"),
    (lambda: Hydrogen2D(charge=0.0), ValueError, "charge must be positive"),
    (lambda: DenseOperator(torch.eye(3, dtype=torch.int64)), ValueError, "non-empty 2D float array"),
    (lambda: DenseOperator(torch.ones(3)), ValueError, "non-empty 2D float array"),
    (lambda: DenseOperator(torch.full((2, 2), math.nan)), ValueError, "non-finite"),
    (lambda: DenseOperator(torch.eye(3)).exact_eigenvalues(4), ValueError, "exceeds the rank bound"),
])
def test_bad_operator_arguments(factory, exc, match):
    with pytest.raises(exc, match=match):
        factory()


@pytest.mark.parametrize("eps", [0.0, -0.01])
def test_bad_fd_eps(eps):
    with pytest.raises(ValueError, match="fd_eps"):
        Schrodinger(lambda x: x[:, 0], 2, laplacian="fd", fd_eps=eps)


def test_operator_apply_rejects_wrong_point_shape():
    op = HarmonicOscillator(2)
    with pytest.raises(ValueError, match=r"expected x of shape \(n, 2\), got \(4, 3\)"):
        op.apply(lambda x: x, torch.zeros(4, 3))
