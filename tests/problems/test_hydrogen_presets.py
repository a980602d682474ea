"""The hydrogen preset's choices from the number of modes: the sampler, one radial-exponential component per
shell the modes reach and one for the next shell, each peaking where the shell's outermost closed-form state
peaks (neuralsvd.problems.presets.hydrogen_shell_scales); the batch, growing with the shells
(hydrogen_batch_size)."""

from __future__ import annotations

import pytest
import torch

from neuralsvd.numerics.sampling import Mixture, RadialExponential
from neuralsvd.operators import Hydrogen2D
from neuralsvd.problems import ConfigError, get_problem, make_operator
from neuralsvd.problems.experiment import build
from neuralsvd.problems.presets import hydrogen_batch_size, hydrogen_shell_scales


@pytest.mark.parametrize("charge", [1.0, 2.0])
def test_each_component_peaks_with_its_shells_outermost_state(charge):
    """The radial density ``r |ψ|²`` of the state ``l = n`` of shell ``n`` (Yang et al.'s closed form, as
    the metrics use it) peaks at the component's ``a_n``, where ``r e^{-r/a_n}`` peaks."""
    scales = hydrogen_shell_scales(16, charge)
    assert len(scales) == 5
    op = Hydrogen2D(charge=charge)
    r = torch.linspace(1e-3, 120.0, 240_001, dtype=torch.float64)
    x = torch.stack([r, torch.zeros_like(r)], 1)  # θ = 0: the cos(lθ) states at their largest
    psi = op.exact_eigenfunctions(x, 25)  # (n, 25)
    for n, a in enumerate(scales):
        outer = (n + 1) ** 2 - 1  # mode index of (n, l = n), the last of shell n
        peak = r[(r * psi[:, outer] ** 2).argmax()]
        assert float(peak) == pytest.approx(a, rel=1e-3)


def test_shells_follow_the_number_of_modes():
    assert hydrogen_shell_scales(1) == (0.5, 4.5)
    assert hydrogen_shell_scales(4) == (0.5, 4.5, 12.5)
    assert hydrogen_shell_scales(5) == hydrogen_shell_scales(9) == (0.5, 4.5, 12.5, 24.5)
    assert hydrogen_shell_scales(16) == (0.5, 4.5, 12.5, 24.5, 40.5)


def test_the_preset_picks_its_sampler_from_the_modes():
    base = get_problem("hydrogen").default_config()
    assert base.operator["sampler_exp_scale"] == "auto"
    for modes, scales in ((9, (0.5, 4.5, 12.5, 24.5)), (16, (0.5, 4.5, 12.5, 24.5, 40.5))):
        cfg = base.with_overrides([f"modes={modes}"])
        sampler = make_operator(cfg).sampler
        assert isinstance(sampler, Mixture)
        assert [c.scale for c in sampler.components if isinstance(c, RadialExponential)] == list(scales)
        assert cfg.operator["sampler_exp_scale"] == scales  # recorded: config.json holds the choice
    pinned = base.with_overrides(["modes=16", "operator.sampler_exp_scale=(0.5, 2.0, 8.0)"])
    assert [c.scale for c in make_operator(pinned).sampler.components] == [0.5, 2.0, 8.0]
    with pytest.raises(ConfigError, match="operator.charge must be a positive number, got 0"):
        make_operator(base.with_overrides(["operator.charge=0"]))


def test_batch_grows_with_the_shells():
    assert [hydrogen_batch_size(m) for m in (1, 4, 5, 9)] == [128] * 4  # at most three shells
    assert hydrogen_batch_size(10) == hydrogen_batch_size(16) == 256
    assert hydrogen_batch_size(25) == 384


def test_the_preset_picks_its_batch_from_the_modes():
    base = get_problem("hydrogen").default_config()
    assert base.train.batch_size == "auto"
    for modes, batch in ((9, 128), (16, 256)):
        cfg = base.with_overrides([f"modes={modes}"])
        exp = build(cfg)
        assert exp.options["batch_size"] == batch
        assert cfg.train.batch_size == batch  # recorded: config.json holds the choice
    pinned = base.with_overrides(["modes=16", "train.batch_size=64"])  # --batch-size / --set win
    assert build(pinned).options["batch_size"] == 64


def test_a_batch_without_a_rule_or_a_number_fails_before_training():
    oscillator = get_problem("oscillator").default_config()
    with pytest.raises(ConfigError, match="train.batch_size='auto' has no rule for problem 'oscillator'"):
        build(oscillator.with_overrides(["train.batch_size=auto"]))
    with pytest.raises(ConfigError, match="train.batch_size expects an integer, got 'abc'"):
        build(oscillator.with_overrides(["train.batch_size=abc"]))
