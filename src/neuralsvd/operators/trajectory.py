r"""The Koopman / transfer operator of a stationary process, learned from trajectories.

For a process ``x_t`` with lag ``τ`` (in steps of the trajectory), the Koopman operator is
``(K g)(x) = E[g(x_{t+τ}) | x_t = x]``, from ``L²(μ_1)`` (the law of ``x_{t+τ}``) to ``L²(μ_0)`` (the law
of ``x_t``). Its SVD ``K = Σ_k σ_k |φ_k⟩⟨ψ_k|`` has ``σ_0 = 1`` with constant ``φ_0 = ψ_0 = 1``; the left
functions ``φ_k`` live on instantaneous frames ``x_t``, the right functions ``ψ_k`` on time-lagged frames
``x_{t+τ}`` (deeptime's VAMP convention). Implied timescales, in steps, are ``t_k = -τ / ln σ_k``.

**Samples.** Time-lagged pairs ``(x_t, x_{t+τ})`` drawn uniformly over every valid start ``t`` of every
trajectory (``0 ≤ t < T_i - τ``): a pair never crosses from one trajectory into the next. The pairs are
never materialized: an index is drawn, the two frames are read (from memory-mapped ``.npy`` files too, so
memory does not grow with the trajectory length). With the pairs playing ``(X, Y)`` of a
:class:`~neuralsvd.operators.PairedOperator`, ``f(x_t)`` is an unbiased single-sample estimate of
``(K* f)(x_{t+τ})`` and ``g(x_{t+τ})`` of ``(K g)(x_t)``.

**Reversible estimate** (``reversible=True``, the default for equilibrium data): every pair is used in
both directions, i.e. the operator of the symmetrized pair law ``½(p(x, y) + p(y, x))`` on
``μ = ½(μ_0 + μ_1)``. It is self-adjoint in ``L²(μ)`` (exactly, for the empirical pairs), so left and right
functions agree and one model learns them (EVD); its eigenvalues are the singular values. A batch of
``n`` pairs is ``2n`` points, pair ``i`` in rows ``2i`` (``x_t``) and ``2i + 1`` (``x_{t+τ}``), and
``(Tf)`` at a row is ``f`` at its partner row; for an even ``n`` each half of the batch holds whole pairs,
so :class:`~neuralsvd.NestedLoRA`'s half-batch moments stay independent. ``reversible=False``: the general
SVD with a ``(left, right)`` pair of models on ``(x_t, x_{t+τ})``.

**The constant mode** (``σ_0 = 1``) is pinned as for paired samples: wrap the network(s) with
:meth:`TrajectoryOperator.pinned_model` (reversible) or :meth:`~PairedOperator.pinned_models`; the learned
outputs are then the modes ``1, 2, ...`` (centered), and ``num_modes`` of the loss counts the constant.

**Input shapes.** One trajectory ``(T, d)``; ``N`` equal-length trajectories ``(N, T, d)`` (never joined
end to end); a list of such arrays (lengths may differ); numpy arrays, torch tensors or paths of ``.npy``
files (opened with ``np.load(mmap_mode="r")``). :class:`Trajectories` validates and holds them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn

from .base import check_model_output
from .paired import ConstantFirst, PairedOperator

__all__ = ["Trajectories", "TrajectoryData", "TrajectoryOperator", "interleave_pairs", "partner_rows"]

#: what :class:`Trajectories` accepts: an array (T, d) or (N, T, d), a .npy path, or a list of these
TrajectoryData = Union[np.ndarray, Tensor, str, os.PathLike, Sequence[Any], "Trajectories"]

#: rows checked for NaN/inf per read (bounded memory on memory-mapped files)
_CHUNK_ROWS = 1 << 20


def _load(item: Any, what: str) -> np.ndarray:
    """One entry of the input as a numpy array (a path is memory-mapped; tensors share memory)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.suffix != ".npy" or not path.is_file():
            raise ValueError(f"{what}: {str(path)!r} is not a .npy file (trajectories are (T, d) or (N, T, d) "
                             "arrays saved with numpy.save)")
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if isinstance(item, Tensor):
        return item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        return item
    raise TypeError(f"{what} must be a numpy array, a torch tensor or a .npy path, got {type(item).__name__}")


def _check_finite(array: np.ndarray, what: str) -> None:
    """Raise if ``array (N, T, d)`` holds NaN or inf, reading at most :data:`_CHUNK_ROWS` frames at once."""
    flat = array.reshape(-1, array.shape[-1]) if array.flags.c_contiguous else None
    chunks = (
        (flat[i : i + _CHUNK_ROWS] for i in range(0, flat.shape[0], _CHUNK_ROWS))
        if flat is not None
        else (array[n] for n in range(array.shape[0]))
    )
    for chunk in chunks:
        if not np.isfinite(chunk).all():
            raise ValueError(f"{what} holds NaN or infinite values: remove or fill those frames first")


class _Block:
    """``N`` trajectories of equal length ``T`` as an array ``(N, T, d)`` (a view, possibly memory-mapped)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def count(self) -> int:
        return self.array.shape[0]

    @property
    def length(self) -> int:
        return self.array.shape[1]

    def num_pairs(self, lag: int) -> int:
        return self.count * max(self.length - lag, 0)

    def pairs(self, index: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``x_t``, ``x_{t+τ}`` of the pairs ``index`` (``< num_pairs``), each ``(n, d)``."""
        per = self.length - lag
        traj, t = np.divmod(index, per)
        return np.asarray(self.array[traj, t]), np.asarray(self.array[traj, t + lag])


class Trajectories:
    """Validated trajectories, held without copying (module docstring: accepted shapes).

    Attributes: ``dim`` (``d``), ``lengths`` (frames per trajectory, in input order). Raises
    ``ValueError`` naming the problem for an empty list, a 1-D array, other ranks, differing dimensions,
    non-numeric data or NaN/inf frames.
    """

    def __init__(self, data: TrajectoryData, check_finite: bool = True):
        if isinstance(data, Trajectories):
            self.blocks, self.dim = list(data.blocks), data.dim
            return
        items = list(data) if isinstance(data, (list, tuple)) else [data]
        if not items:
            raise ValueError("trajectories: got an empty list; pass at least one array (T, d), (N, T, d) or .npy path")
        blocks: list[_Block] = []
        for i, item in enumerate(items):
            what = "trajectories" if len(items) == 1 else f"trajectories[{i}]"
            array = _load(item, what)
            if array.ndim == 1:
                raise ValueError(f"{what} is 1-D with shape {array.shape}: a trajectory is (T, d); for a scalar "
                                 "series pass x[:, None], shape (T, 1)")
            if array.ndim not in (2, 3):
                raise ValueError(f"{what} must be (T, d) or (N, T, d) (N trajectories of T frames), got shape "
                                 f"{array.shape}")
            if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
                raise ValueError(f"{what} must hold numbers, got dtype {array.dtype}")
            array = array[None] if array.ndim == 2 else array  # (N, T, d), a view
            if min(array.shape) == 0:
                raise ValueError(f"{what} is empty (shape {array.shape})")
            if check_finite:
                _check_finite(array, what)
            blocks.append(_Block(array))
        dims = sorted({b.array.shape[2] for b in blocks})
        if len(dims) > 1:
            listed = ", ".join(f"[{i}]: d={b.array.shape[2]}" for i, b in enumerate(blocks))
            raise ValueError(f"trajectories differ in dimension ({listed}): every frame must have the same d")
        self.blocks, self.dim = blocks, dims[0]

    @property
    def lengths(self) -> list[int]:
        return [b.length for b in self.blocks for _ in range(b.count)]

    def num_pairs(self, lag: int) -> int:
        """Valid lagged pairs ``Σ_i max(T_i - lag, 0)``."""
        return sum(b.num_pairs(lag) for b in self.blocks)

    def check_lag(self, lag: int) -> None:
        if isinstance(lag, bool) or not isinstance(lag, (int, np.integer)) or lag < 1:
            raise ValueError(f"lag must be a positive integer number of steps, got {lag!r}")
        if self.num_pairs(int(lag)) == 0:
            raise ValueError(f"lag={lag} must be shorter than a trajectory: the longest has {max(self.lengths)} "
                             "frames, so no pair (x_t, x_{t+lag}) exists")

    def split(self, fraction: float, lag: int = 1) -> tuple[Trajectories, Trajectories]:
        """``(first, last)``: every trajectory cut in time, its last ``fraction`` of frames (rounded up) going
        to ``last`` (views; pairs across the cut are lost). Each part keeps at least ``lag + 1`` frames."""
        if not 0 < fraction < 1:
            raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction!r}")
        first, last = [], []
        for b in self.blocks:
            cut = b.length - math.ceil(fraction * b.length)
            if cut <= lag or b.length - cut <= lag:
                raise ValueError(f"trajectories of {b.length} frames are too short to hold out {fraction} of them "
                                 f"at lag {lag} (each part needs more than {lag} frames)")
            first.append(b.array[:, :cut])
            last.append(b.array[:, cut:])
        return Trajectories(first, check_finite=False), Trajectories(last, check_finite=False)

    def _starts(self, lag: int) -> np.ndarray:
        return np.cumsum([0] + [b.num_pairs(lag) for b in self.blocks])  # (B + 1,)

    def pairs(self, index: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames of the pairs ``index`` (int64, each in ``[0, num_pairs(lag))``, in the order of
        :meth:`num_pairs`: trajectory by trajectory, then by start ``t``): ``(x_t, x_{t+lag})``, each
        ``(n, d)``, float64."""
        starts = self._starts(lag)
        block = np.searchsorted(starts, index, side="right") - 1
        x = np.empty((index.shape[0], self.dim))
        y = np.empty_like(x)
        for b in np.unique(block):
            sel = block == b
            x[sel], y[sel] = self.blocks[b].pairs(index[sel] - starts[b], lag)
        return x, y

    def frames(self) -> Iterator[np.ndarray]:
        """Every trajectory as an array ``(T_i, d)`` (views), in input order."""
        for b in self.blocks:
            yield from b.array


def interleave_pairs(x: Tensor, y: Tensor) -> Tensor:
    """``(n, d)``, ``(n, d)`` -> ``(2n, d)`` with pair ``i`` in rows ``2i`` (``x``) and ``2i + 1`` (``y``)."""
    return torch.stack([x, y], 1).reshape(-1, x.shape[1])


def partner_rows(values: Tensor) -> Tensor:
    """``values (2n, L)`` at interleaved pairs -> the values at each row's partner (rows ``2i`` and ``2i + 1``
    swapped)."""
    return values.reshape(-1, 2, values.shape[1]).flip(1).reshape(values.shape)


class TrajectoryOperator(PairedOperator):
    """The Koopman operator at lag ``lag`` (steps) of the process behind ``trajectories`` (module docstring).

    Args:
        trajectories: any input :class:`Trajectories` accepts (module docstring).
        lag: ``τ`` in steps, shorter than the longest trajectory.
        reversible: symmetrize (each pair in both directions; self-adjoint, one model, EVD) or not (the
            general SVD with a ``(left, right)`` pair of models).
        evaluation_pairs: the final read-out uses every valid pair once when there are at most this many
            (deterministic), else ``fit``'s ``eval_batches`` random batches.
        reference: optional closed form or reference solution of this operator (an object with
            ``exact_eigenvalues(L)`` (singular values, the constant first), ``exact_eigenfunctions(x, L)``
            orthonormal in ``L²(μ)`` and ``quadrature()`` for ``L²(μ)``), used by :func:`neuralsvd.evaluate`.

    Attributes: ``trajectories`` (:class:`Trajectories`), ``lag``, ``reversible``, ``num_pairs``,
    ``self_adjoint`` (= ``reversible``), ``dim_x = dim_y = d``.
    """

    #: ``(Tf)`` at a row is ``f`` at its partner row of the batch: not a function of the row alone
    pointwise = False

    def __init__(self, trajectories: TrajectoryData, lag: int, reversible: bool = True,
                 evaluation_pairs: int = 1_000_000, reference: Any = None):
        super().__init__()
        self.trajectories = Trajectories(trajectories)
        self.trajectories.check_lag(lag)
        self.lag, self.reversible = int(lag), bool(reversible)
        self.self_adjoint = self.reversible
        self.num_pairs = self.trajectories.num_pairs(self.lag)
        self.dim_x = self.dim_y = self.trajectories.dim
        self.evaluation_pairs = int(evaluation_pairs)
        self.reference = reference

    # -- sampling ----------------------------------------------------------------------------------------
    def lagged_pairs(self, index: Tensor, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """``(x_t, x_{t+τ})`` of the pairs ``index (n,)`` (see :meth:`Trajectories.pairs`), each ``(n, d)``."""
        x, y = self.trajectories.pairs(index.cpu().numpy().astype(np.int64), self.lag)
        dtype = dtype or torch.get_default_dtype()
        return (torch.from_numpy(x).to(device=device, dtype=dtype), torch.from_numpy(y).to(device=device, dtype=dtype))

    def _draw(self, n: int, generator: torch.Generator | None, dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
        device = generator.device if generator is not None else torch.device("cpu")
        index = torch.randint(self.num_pairs, (n,), generator=generator, device=device)
        return self.lagged_pairs(index, device, dtype)

    def _check_even(self, n: int) -> None:
        if self.reversible and n % 2:
            raise ValueError(f"the reversible trajectory operator needs an even number of pairs per batch (each half "
                             f"of the batch holds whole pairs), got {n}")

    def sample(self, n, generator=None, dtype=None):
        """Reversible only: ``n`` pairs as ``2n`` interleaved points (module docstring)."""
        if not self.reversible:
            raise ValueError("a non-reversible TrajectoryOperator has only the SVD form: pass (left, right) models")
        self._check_even(n)
        return interleave_pairs(*self._draw(n, generator, dtype))

    def sample_pair(self, n, generator=None, dtype=None):
        """``(x, y)``: ``n`` pairs ``(x_t, x_{t+τ})``; reversible: ``2n`` rows, each pair in both directions."""
        self._check_even(n)
        x, y = self._draw(n, generator, dtype)
        if not self.reversible:
            return x, y
        xy = interleave_pairs(x, y)
        return xy, partner_rows(xy)

    def _apply_operator(self, f, x):
        fx = f(x)  # (2n, L)
        check_model_output(fx, x.shape[0])
        return fx, partner_rows(fx.detach())

    def pinned_model(self, module: nn.Module) -> ConstantFirst:
        """Reversible (one model): the network for the non-constant modes behind the pinned constant."""
        return ConstantFirst(module)

    def evaluation_is_iid(self, num_batches, batch_size, svd=False):
        return self.num_pairs > self.evaluation_pairs

    def evaluation_batches(self, num_batches, batch_size, generator, dtype, svd=False):
        """Every pair once (in chunks of ``batch_size`` pairs) when there are at most ``evaluation_pairs``,
        else ``num_batches`` random batches."""
        if self.evaluation_is_iid(num_batches, batch_size, svd):
            yield from super().evaluation_batches(num_batches, batch_size + batch_size % 2, generator, dtype, svd)
            return
        device = generator.device if generator is not None else torch.device("cpu")
        chunk = max(2, batch_size - batch_size % 2)
        for start in range(0, self.num_pairs, chunk):
            x, y = self.lagged_pairs(torch.arange(start, min(start + chunk, self.num_pairs)), device, dtype)
            if not self.reversible:
                yield x, y
                continue
            xy = interleave_pairs(x, y)
            yield (xy, partner_rows(xy)) if svd else xy

    # -- reference (optional) ------------------------------------------------------------------------------
    def _reference(self) -> Any:
        if self.reference is None:
            raise NotImplementedError("this TrajectoryOperator has no closed form (pass reference=...)")
        return self.reference

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        return self._reference().exact_eigenvalues(num_modes)

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        return self._reference().exact_eigenfunctions(x, num_modes)

    def exact_right_functions(self, y: Tensor, num_modes: int) -> Tensor:
        ref = self._reference()
        right = getattr(ref, "exact_right_functions", None)
        return right(y, num_modes) if right is not None else ref.exact_eigenfunctions(y, num_modes)

    def quadrature(self):
        return self._reference().quadrature()

    def right_quadrature(self):
        return self.quadrature()
