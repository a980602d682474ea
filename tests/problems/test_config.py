"""Configuration: every fit option has one home (TrainConfig or the top level) and can be set with --set."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from neuralsvd.problems import ConfigError, ExperimentConfig, fit_options
from neuralsvd.problems.config import RUN_OPTIONS, TrainConfig
from neuralsvd.training.fit import FIT_OPTIONS


def test_every_fit_option_is_configurable_or_set_by_the_runner():
    config = ExperimentConfig(problem="oscillator")
    assert set(fit_options(config)) | set(RUN_OPTIONS) == set(FIT_OPTIONS)
    assert not set(fit_options(config)) & set(RUN_OPTIONS)


def test_fit_options_follow_the_config_and_overrides():
    config = ExperimentConfig(problem="oscillator", seed=3).with_overrides(
        ["train.max_rollbacks=0", "train.lr_backoff=0.25", "train.eval_batch_size=512", "dtype=float64",
         "train.readout=ritz"])
    options = fit_options(config)
    assert options["max_rollbacks"] == 0 and options["lr_backoff"] == 0.25 and options["eval_batch_size"] == 512
    assert options["dtype"] is torch.float64 and options["seed"] == 3 and options["readout"] == "ritz"
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert {k: v for k, v in fit_options(ExperimentConfig(problem="x")).items() if k in defaults and k != "dtype"} == {
        k: v for k, v in defaults.items() if k != "dtype"}


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dtype 'float16'; valid: float32, float64"):
        fit_options(ExperimentConfig(problem="oscillator").with_overrides(["train.dtype=float16"]))
