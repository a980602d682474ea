"""Potentials ``V(x)`` from a text expression or an importable Python callable, and checks on them.

An expression is parsed with :mod:`ast` against a whitelist and compiled into a tree of closures over
torch operations; the text is never passed to ``eval`` or ``compile``. The grammar:

- variables ``x0 .. x{d-1}`` (the coordinates), ``r`` (``|x|``), the constants ``pi`` and ``e``;
- numbers (``2``, ``2.25``, ``1e-3``), ``+ - * / **`` and unary ``-`` / ``+``, parentheses;
- the functions :data:`FUNCTIONS` (one argument each; ``min`` and ``max`` take two or more, elementwise).

``mypkg.mod:V`` instead names a callable ``x (n, d) -> V(x) (n,)`` in an importable module; importing it
runs the user's code. Both routes give a callable ``(n, d) -> (n,)`` for
:class:`~neuralsvd.operators.Schrodinger`.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import math
import re
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FUNCTIONS", "ExpressionPotential", "PotentialError", "check_bounded_below", "check_finite", "load_potential",
           "parse_potential"]

Potential = Callable[[Tensor], Tensor]
_Node = Callable[[Tensor], Tensor]  # x (n, d) -> (n,)

_UNARY = {"sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log, "sin": torch.sin, "cos": torch.cos,
          "tan": torch.tan, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh, "abs": torch.abs}
_VARIADIC = {"min": torch.minimum, "max": torch.maximum}
#: the functions an expression may call
FUNCTIONS = (*_UNARY, *_VARIADIC)
_CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul, ast.Div: torch.div, ast.Pow: torch.pow}
_GRAMMAR = ("numbers, x0..x{d-1}, r, pi, e, + - * / **, unary -, parentheses and the functions "
            + ", ".join(FUNCTIONS))
_VARIABLE = re.compile(r"x(\d+)")
_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class PotentialError(ValueError):
    """A potential expression or callable is invalid, or the potential fails a check."""


class _Compiler:
    """Turns a whitelisted :mod:`ast` tree into a closure ``x (n, d) -> (n,)``."""

    def __init__(self, text: str, dim: int):
        self.text, self.dim = text, dim

    def _where(self, node: ast.AST) -> str:
        segment = ast.get_source_segment(self.text, node)
        return f"{segment!r} (column {node.col_offset + 1})" if segment else f"column {node.col_offset + 1}"

    def _names(self) -> str:
        return ", ".join([f"x{k}" for k in range(self.dim)] + ["r", *_CONSTANTS])

    def compile(self, node: ast.AST) -> _Node:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PotentialError(f"only real numbers are allowed as constants, got {self._where(node)}")
            return _constant(float(value))
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                hint = "; write ** for a power" if isinstance(node.op, ast.BitXor) else ""
                raise PotentialError(f"operator {type(node.op).__name__} in {self._where(node)} is not allowed "
                                     f"(valid: + - * / **){hint}")
            op, left, right = _BINARY[type(node.op)], self.compile(node.left), self.compile(node.right)
            return lambda x: op(left(x), right(x))
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise PotentialError(f"operator {type(node.op).__name__} in {self._where(node)} is not allowed "
                                     "(valid unary operators: - +)")
            inner = self.compile(node.operand)
            return (lambda x: -inner(x)) if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            raise PotentialError(f"attribute access {self._where(node)} is not allowed; call the functions by "
                                 f"their bare names ({', '.join(FUNCTIONS)})")
        raise PotentialError(f"{type(node).__name__} {self._where(node)} is not allowed in a potential; "
                             f"the grammar is: {_GRAMMAR}")

    def _name(self, node: ast.Name) -> _Node:
        name = node.id
        if name == "r":
            return lambda x: x.norm(dim=-1)
        if name in _CONSTANTS:
            return _constant(_CONSTANTS[name])
        match = _VARIABLE.fullmatch(name)
        if match:
            k = int(match.group(1))
            if k >= self.dim:
                raise PotentialError(f"variable {name} needs dimension at least {k + 1}, but the operator's "
                                     f"dimension is {self.dim}: use x0..x{self.dim - 1} or set operator.dim")
            return lambda x: x[:, k]
        if name in FUNCTIONS:
            raise PotentialError(f"function {name} must be called, e.g. {name}(r)")
        raise PotentialError(f"unknown name {name!r}; valid names: {self._names()}")

    def _call(self, node: ast.Call) -> _Node:
        if isinstance(node.func, ast.Attribute):
            return self.compile(node.func)  # raises the attribute-access error
        if not isinstance(node.func, ast.Name):
            raise PotentialError(f"only calls of the functions {', '.join(FUNCTIONS)} are allowed, got "
                                 f"{self._where(node)}")
        name = node.func.id
        if name not in FUNCTIONS:
            raise PotentialError(f"unknown function {name!r} in {self._where(node)}; valid functions: "
                                 f"{', '.join(FUNCTIONS)}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise PotentialError(f"{name}() takes positional arguments only, got {self._where(node)}")
        args = [self.compile(a) for a in node.args]
        if name in _UNARY:
            if len(args) != 1:
                raise PotentialError(f"{name}() takes one argument, got {len(args)} in {self._where(node)}")
            fn, (arg,) = _UNARY[name], args
            return lambda x: fn(arg(x))
        if len(args) < 2:
            raise PotentialError(f"{name}() takes two or more arguments, got {len(args)} in {self._where(node)}")
        combine = _VARIADIC[name]

        def reduce(x: Tensor) -> Tensor:
            out = args[0](x)
            for a in args[1:]:
                out = combine(out, a(x))
            return out

        return reduce


def _constant(value: float) -> _Node:
    return lambda x: torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)


class ExpressionPotential:
    """A compiled potential expression: ``V(x)`` for ``x (n, dim)`` returns ``(n,)`` in ``x``'s dtype."""

    def __init__(self, text: str, dim: int, fn: _Node):
        self.text, self.dim, self._fn = text, dim, fn

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"the potential {self.text!r} expects x of shape (n, {self.dim}), got {tuple(x.shape)}")
        return self._fn(x)

    def __repr__(self) -> str:
        return f"ExpressionPotential({self.text!r}, dim={self.dim})"


def parse_potential(text: str, dim: int) -> ExpressionPotential:
    """Compile the expression ``text`` (grammar: the module docstring) over ``x0..x{dim-1}``.

    Raises :class:`PotentialError` naming the offending part: a syntax error, an unknown name (with the
    valid ones), a variable ``x{k}`` with ``k >= dim``, attribute access, a call of anything but
    :data:`FUNCTIONS`, or any other construct (subscripts, lambdas, comparisons, ...).
    """
    if not isinstance(text, str) or not text.strip():
        raise PotentialError(f"the potential must be a non-empty expression, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise PotentialError(f"cannot parse the potential {text!r}: {err.msg} at column {err.offset}") from None
    return ExpressionPotential(text, dim, _Compiler(text.strip(), dim).compile(tree.body))


def load_potential(spec: str | float, dim: int) -> Potential:
    """A potential from ``spec``: an expression (:func:`parse_potential`), or ``module.path:attr`` naming a
    callable ``x (n, dim) -> (n,)``, which is imported (this runs the module's code)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = repr(spec)
    if not isinstance(spec, str):
        raise PotentialError(f"the potential must be an expression or 'module:callable', got {spec!r}")
    if not _CALLABLE.fullmatch(spec.strip()):
        return parse_potential(spec, dim)
    module_name, attr = spec.strip().split(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise PotentialError(f"cannot import module {module_name!r} for the potential {spec!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PotentialError(f"module {module_name!r} has no attribute {attr!r} (the potential {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PotentialError(f"{spec!r} is not callable; expected a function x (n, {dim}) -> V(x) (n,)")
    return obj


def check_finite(potential: Potential, x: Tensor, where: str = "the sampler's points") -> Tensor:
    """``V(x)`` as a float64 ``(n,)`` tensor; :class:`PotentialError` unless it has that shape and is finite."""
    v = potential(x)
    if not isinstance(v, Tensor) or v.shape != (x.shape[0],):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise PotentialError(f"the potential must map x of shape (n, {x.shape[1]}) to (n,) = ({x.shape[0]},), "
                             f"got {shape}")
    bad = ~torch.isfinite(v)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise PotentialError(f"the potential is not finite at {int(bad.sum())} of {x.shape[0]} of {where}, "
                             f"e.g. V({[round(c, 4) for c in x[i].tolist()]}) = {v[i].item()}")
    return v.double()


#: radii of :func:`check_bounded_below`
RADII = tuple(2.0**k for k in range(-2, 11))


def check_bounded_below(potential: Potential, dim: int, directions: int = 512, seed: int = 0) -> str:
    """Reject a potential that decreases without bound at large ``|x|``; returns what was checked.

    ``V(R u)`` is evaluated in float64 for :data:`RADII` (``1/4 .. 1024``, doubling) and ``directions`` unit
    vectors ``u`` (the ``±`` axes and random ones). With ``m(R) = min_u V(R u)`` (NaN skipped), the
    potential is taken as unbounded below if ``m`` decreases over the last three doublings and the last
    decrease is at least 3/4 of the first (a divergent tail: ``-x0**2``, ``x0**2 - x1``, ``-log(1 + r)``;
    a convergent one, ``1/r`` or ``-1/r`` or ``-exp(-r**2)``, shrinks faster). A heuristic: a decrease
    that starts beyond ``|x| ≈ 100``, or one slower than ``r^-0.2``, is not told apart.
    """
    gen = torch.Generator().manual_seed(seed)
    axes = torch.eye(dim, dtype=torch.float64)
    u = torch.cat([axes, -axes, torch.randn(max(directions - 2 * dim, 0), dim, generator=gen, dtype=torch.float64)])
    u = u / u.norm(dim=1, keepdim=True)  # (m, d)
    minima = []
    for radius in RADII:
        with torch.no_grad():
            v = potential(radius * u).double()  # (m,)
        v = torch.where(torch.isnan(v), torch.full_like(v, math.inf), v)
        minima.append(float(v.min()))
    drops = [a - b for a, b in itertools.pairwise(minima[-4:])]  # (3,) decreases over the last doublings
    checked = (f"min over {u.shape[0]} directions of V(R u) at R = {RADII[0]:g} .. {RADII[-1]:g}: "
               + ", ".join(f"{m:.3g}" for m in minima))
    if all(d > 0 for d in drops) and drops[-1] >= 0.75 * drops[0]:
        raise PotentialError(f"the potential looks unbounded below (the Hamiltonian has no lowest state): "
                             f"{checked}, decreasing without levelling off at large R")
    return checked
