"""The registry: every module imports on its own (no circles), and problems register once."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import neuralsvd
from neuralsvd.problems import PROBLEMS, registry


def _modules() -> list[str]:
    names = ["neuralsvd"]
    for info in pkgutil.walk_packages(neuralsvd.__path__, "neuralsvd."):
        names.append(info.name)
    return sorted(names)


def _import_alone(names: list[str]) -> list[str]:
    """Import each module in a fresh interpreter of its own (in parallel): an import circle shows up
    whichever module comes first. Returns the failures."""
    procs = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stderr=subprocess.PIPE, text=True)
             for name in names}
    failures = []
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        if proc.returncode:
            failures.append(f"{name}: {err.strip().splitlines()[-1]}")
    return failures


def test_experiment_and_result_modules_import_alone():
    """The modules that once formed circles (presets <-> data_presets; operators -> the training loop)."""
    assert not _import_alone(["neuralsvd.problems.data_presets", "neuralsvd.problems.presets",
                              "neuralsvd.operators.kernel", "neuralsvd.training.result"])


@pytest.mark.slow
def test_every_module_imports_alone():
    assert not _import_alone(_modules())


def test_presets_register_into_one_registry():
    assert list(PROBLEMS)[:3] == ["hydrogen", "hydrogen-paper", "oscillator"]
    assert {"rbf-gaussian", "cycle-graph", "gaussian-pairs", "digits-views"} <= set(PROBLEMS)
    with pytest.raises(ValueError, match="problem 'oscillator' is already registered"):
        registry.register(PROBLEMS["oscillator"])
