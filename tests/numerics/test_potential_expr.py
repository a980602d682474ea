"""Potential expressions: the grammar compiles to the right values, everything else is refused with a
message naming it; the import route; the finiteness and bounded-below checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralsvd.numerics.potential_expr import (
    FUNCTIONS,
    PotentialError,
    check_bounded_below,
    check_finite,
    load_potential,
    parse_potential,
)

X = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.9], [1.5, 1.5]], dtype=torch.float64)  # (4, 2)
x0, x1 = X[:, 0].numpy(), X[:, 1].numpy()
r = np.hypot(x0, x1)


@pytest.mark.parametrize(("text", "expected"), [
    ("x0**2 + 2.25*x1**2", x0**2 + 2.25 * x1**2),
    ("-x0 + 3", -x0 + 3),
    ("+x1 - -x0", x1 + x0),
    ("sqrt(x0**2 + x1**2) - r", 0 * r),
    ("-1/r", -1 / r),
    ("exp(-r) * log(1 + r)", np.exp(-r) * np.log(1 + r)),
    ("sin(x0) * cos(x1) + tan(x0)", np.sin(x0) * np.cos(x1) + np.tan(x0)),
    ("tanh(x0) + sinh(x1) - 1/cosh(x0)**2", np.tanh(x0) + np.sinh(x1) - 1 / np.cosh(x0) ** 2),
    ("abs(x0 - x1)", np.abs(x0 - x1)),
    ("min(x0, x1, 0.5) + max(x0, 0)", np.minimum(np.minimum(x0, x1), 0.5) + np.maximum(x0, 0)),
    ("pi * e * 1e-3 + 2**-1", math.pi * math.e * 1e-3 + 0.5 + 0 * r),
    ("7", 7 + 0 * r),
])
def test_grammar_compiles_to_the_expression(text, expected):
    v = parse_potential(text, 2)(X)
    assert v.shape == (4,) and v.dtype == torch.float64
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-14, atol=1e-14)


def test_every_whitelisted_function_is_reachable():
    for name in FUNCTIONS:
        text = f"{name}(x0, x1)" if name in ("min", "max") else f"{name}(x0 + 3)"
        assert torch.isfinite(parse_potential(text, 2)(X)).all(), name


@pytest.mark.parametrize(("text", "message"), [
    ("torch.exp(x0)", "attribute access 'torch.exp'"),
    ("x0.real", "attribute access"),
    ("foo(x0)", "unknown function 'foo'.*valid functions: sqrt, exp"),
    ("__import__('os')", "unknown function '__import__'"),
    ("eval('1')", "unknown function 'eval'"),
    ("y + 1", "unknown name 'y'; valid names: x0, x1, r, pi, e"),
    ("x2 + x0", "variable x2 needs dimension at least 3.*dimension is 2"),
    ("x0[0]", "Subscript 'x0\\[0\\]'"),
    ("lambda: 1", "Lambda"),
    ("(lambda: 0)()", "only calls of the functions"),
    ("x0 if x1 else 0", "IfExp"),
    ("x0 < 1", "Compare"),
    ("[x0, x1]", "List"),
    ("x0 ^ 2", "write \\*\\* for a power"),
    ("x0 // 2", "FloorDiv"),
    ("not x0", "Not"),
    ("'a' + x0", "only real numbers"),
    ("True * x0", "only real numbers"),
    ("1j * x0", "only real numbers"),
    ("exp(x0, x1)", "exp\\(\\) takes one argument, got 2"),
    ("max(x0)", "max\\(\\) takes two or more arguments"),
    ("exp(x=1)", "positional arguments only"),
    ("exp", "must be called"),
    ("x0 +", "cannot parse"),
    ("", "non-empty"),
])
def test_refused_with_a_message(text, message):
    with pytest.raises(PotentialError, match=message):
        parse_potential(text, 2)


def test_expression_checks_the_input_shape():
    with pytest.raises(ValueError, match="expects x of shape \\(n, 2\\)"):
        parse_potential("x0", 2)(torch.zeros(3, 3))


def test_callable_route(tmp_path, monkeypatch):
    (tmp_path / "my_potentials.py").write_text("def well(x):\n    return (x * x).sum(1) - 1.0\nNOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    v = load_potential("my_potentials:well", 2)
    torch.testing.assert_close(v(X), (X * X).sum(1) - 1.0)
    with pytest.raises(PotentialError, match="cannot import module 'no_such_module_xyz'"):
        load_potential("no_such_module_xyz:V", 2)
    with pytest.raises(PotentialError, match="has no attribute 'missing'"):
        load_potential("my_potentials:missing", 2)
    with pytest.raises(PotentialError, match="is not callable"):
        load_potential("my_potentials:NOT_CALLABLE", 2)
    assert isinstance(load_potential(2.5, 2)(X), torch.Tensor)  # a number (as --set parses it) is an expression


@pytest.mark.parametrize("text", ["x0**2 + x1**2", "-1/r", "1/r", "1/sqrt(r)", "-exp(-r**2)", "cos(x0) + x1**2",
                                  "-12/cosh(x0)**2", "log(x0)", "exp(r)"])
def test_bounded_below_passes(text):
    assert "R = 0.25 .. 1024" in check_bounded_below(parse_potential(text, 2), 2)


@pytest.mark.parametrize("text", ["-x0**2", "x0**2 + x1**2 - 0.1*x0**3", "x0**2 - x1", "-log(1 + r)", "-exp(r)",
                                  "-sqrt(r)"])
def test_unbounded_below_is_refused(text):
    with pytest.raises(PotentialError, match="unbounded below.*min over 512 directions of V\\(R u\\)"):
        check_bounded_below(parse_potential(text, 2), 2)


def test_check_finite_names_a_point():
    x = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(check_finite(parse_potential("x0 + x1", 2), x), x.sum(1))
    with pytest.raises(PotentialError, match="not finite at 1 of 2 of the sampler's points, e.g. V\\(\\[-1.0, 2.0\\]\\)"):
        check_finite(parse_potential("log(x0)", 2), x)
    with pytest.raises(PotentialError, match="to \\(n,\\) = \\(2,\\), got \\(2, 2\\)"):
        check_finite(lambda x: x, x)
