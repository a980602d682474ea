"""Named experiments (presets), their configuration and the end-to-end runner behind the CLI."""

from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from .presets import METHODS, PROBLEMS, build_model, get_problem, make_loss, make_model, make_operator
from .run import run

__all__ = ["ExperimentConfig", "ModelConfig", "TrainConfig", "ConfigError", "PROBLEMS", "METHODS", "get_problem",
           "make_loss", "make_model", "build_model", "make_operator", "run"]
