"""neuralsvd: learn the top-L singular/eigen-functions of operators with neural networks (NeuralSVD)."""

import sys
from importlib.metadata import PackageNotFoundError, version

from . import models, operators
from .losses import LossOutput, NestedLoRA, NeuralEF, SpectralLoss, SpIN
from .numerics import autodiff, metrics, quadrature, sampling
from .operators import CrossOperator, Operator
from .training.evaluation import evaluate
from .training.fit import DivergenceError, FitResult, fit

# the numerics submodules are public under their short names too: `import neuralsvd.sampling` works
for _module in (autodiff, metrics, quadrature, sampling):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
del _module

try:
    __version__ = version("neuralsvd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [  # noqa: RUF022 - grouped by kind
    # training
    "fit", "FitResult", "DivergenceError",
    # objectives
    "SpectralLoss", "LossOutput", "NestedLoRA", "SpIN", "NeuralEF",
    # operators
    "Operator", "CrossOperator",
    # evaluation and artifacts
    "evaluate", "load",
    # submodules
    "autodiff", "metrics", "models", "operators", "quadrature", "sampling", "estimators",
    "__version__",
]


def __getattr__(name: str):
    """Imported on first use: ``neuralsvd.estimators`` (scikit-learn style estimators; it needs
    scikit-learn, which the rest of the package does not) and ``neuralsvd.load`` (it rebuilds a run's
    experiment, so it loads the named problems)."""
    import importlib

    if name == "estimators":
        return importlib.import_module(".estimators", __name__)
    if name == "load":
        return importlib.import_module(".cli.artifacts", __name__).load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
