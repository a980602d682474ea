"""Named experiments (presets), their configuration and the end-to-end runner behind the CLI.

:mod:`.registry` holds the problems and methods; :mod:`.presets` (Schrödinger problems),
:mod:`.schrodinger_presets` (a user's potential), :mod:`.higher_dim_presets` (the hypercube Laplacian,
3D hydrogen) and :mod:`.data_presets` (kernels, graphs, paired samples) and :mod:`.dynamics_presets` (trajectories) register into it when this
package is imported.
"""

# register the problems, the Schrödinger presets first (the order of `neuralsvd list`)
from . import presets  # noqa: F401

# isort: split
from . import schrodinger_presets  # noqa: F401

# isort: split
from . import higher_dim_presets  # noqa: F401

# isort: split
from . import data_presets  # noqa: F401

# isort: split
from . import dynamics_presets  # noqa: F401

# isort: split
from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, fit_options
from .registry import (
    METHODS,
    PROBLEMS,
    build_model,
    get_problem,
    loss_modes,
    make_loss,
    make_model,
    make_operator,
)
from .run import run

__all__ = [
           "METHODS",
           "PROBLEMS",
           "ConfigError",
           "ExperimentConfig",
           "ModelConfig",
           "TrainConfig",
           "build_model",
           "fit_options",
           "get_problem",
           "loss_modes",
           "make_loss",
           "make_model",
           "make_operator",
           "run",
]
