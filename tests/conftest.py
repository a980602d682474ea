"""Shared fixtures: deterministic seeding, no leaked global state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The test problems are small: one intra-op thread is several times faster than two on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_restore():
    """Seed every RNG the tests touch and restore the global torch state afterwards."""
    dtype = torch.get_default_dtype()
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    grad_enabled = torch.is_grad_enabled()
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    yield
    torch.set_default_dtype(dtype)
    torch.set_rng_state(torch_state)
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_grad_enabled(grad_enabled)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator for sampler calls."""
    return torch.Generator().manual_seed(4321)

