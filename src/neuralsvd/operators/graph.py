r"""Graph operators: functions on the nodes of a weighted undirected graph.

Conventions (on top of :mod:`neuralsvd.operators.base`): functions live on the nodes ``0..N-1`` with
the **uniform** measure (as :class:`~neuralsvd.operators.DenseOperator`), and
$(Tf)(i) = \sum_j M_{ij} f(j)$ with $M = D^{-1/2} A D^{-1/2}$ (``normalized=True``; the top of its
spectrum is the bottom of the normalized Laplacian $I - M$, i.e. Laplacian eigenmaps / spectral
embedding) or $M = A$. The learned operator is ``T = M - shift·I`` (same eigenvectors; ``shift`` near the
top eigenvalue makes clustered eigenvalues well separated relative to the largest, which speeds up
training, e.g. on well-clustered graphs where many eigenvalues of ``M`` are close to 1; only modes with
eigenvalue above ``shift`` are learnable). Reported eigenvalues are those of ``M``, descending; exact
eigenfunctions are ``sqrt(N) v`` for unit eigenvectors ``v``.

**Estimator.** Batches are node indices (:class:`~neuralsvd.sampling.Index`, i.i.d. by default, so that
NestedLoRA's split-batch second moments are unbiased; ``replacement=False`` with a batch of all nodes is
the population, on which losses use exact full-batch moments by default); for each sampled node the
neighbourhood sum $\sum_j M_{ij} f(j)$ is computed exactly from the graph (``f`` evaluated once per
distinct neighbour), so ``(Tf)(i)`` carries no noise and minibatch estimates are unbiased. Cost per batch:
the number of edges leaving it. Evaluation uses all nodes once.

**Models.** ``models.Tabular(N, L)`` (one free value per node), or a network on node features wrapped by
:class:`NodeFeatures` (which looks up the features of the sampled nodes, and extends to new nodes).

**References.** :class:`CycleGraph` and :class:`GridGraph` in closed form (products of path and cycle
spectra); any other graph: ``scipy.sparse.linalg.eigsh``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..numerics.quadrature import Quadrature
from ..numerics.sampling import Index
from .base import Function, Operator, check_model_output

__all__ = ["CycleGraph", "GraphOperator", "GridGraph", "NodeFeatures"]


class NodeFeatures(nn.Module):
    """A network on node features as a function of node indices:
    ``index (n,) -> w[index] · (net(features[index]) + r[index])``.

    ``net`` maps ``(n, d) -> (n, L)``; ``w`` ``(N,)`` is a fixed per-node weight (default 1). For the
    normalized operator ``M = D^{-1/2} A D^{-1/2}`` :meth:`GraphOperator.node_model` sets
    ``w = sqrt(d_i / mean d)``: the eigenvectors of ``M`` are ``D^{1/2} u`` with ``u`` those of the random walk
    ``D^{-1} A``, which vary smoothly over the graph while ``D^{1/2}`` carries the node-to-node noise of
    the degrees; so ``net`` learns the ``u`` (Laplacian eigenmaps' embedding, the top one constant).

    ``residual=True`` adds ``r``, a trainable ``(N, L)`` table of per-node corrections, zero at the start
    (the parameter ``residual``): the network learns what is smooth in the features and the table the
    rest, so the model can represent the graph's eigenvectors exactly, whatever the features (a network
    of features alone is only as exact as the eigenvectors are smooth functions of them). The table exists
    for the graph's own nodes only: on new nodes ``net`` alone is the out-of-sample extension (times ``w``
    of the new node for the eigenvectors of ``M``), so when the extension matters more than the training
    nodes' values, use ``residual=False`` (as :class:`~neuralsvd.estimators.NeuralSpectralEmbedding` does).
    """

    def __init__(self, net: nn.Module, features: Tensor, weight: Tensor | None = None, residual: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("features", torch.as_tensor(features))
        if weight is not None:
            weight = torch.as_tensor(weight)
            if weight.shape != (self.features.shape[0],):
                raise ValueError(f"weight must be (N,) = ({self.features.shape[0]},), got shape {tuple(weight.shape)}")
        self.register_buffer("weight", weight)
        self.residual: nn.Parameter | None = None
        if residual:
            p = next(net.parameters(), None)
            with torch.no_grad():  # the number of modes and the dtype from one node through the network
                out = net(self.features[:1].to(p.dtype) if p is not None else self.features[:1])  # (1, L)
            self.residual = nn.Parameter(torch.zeros(self.features.shape[0], out.shape[1], dtype=out.dtype,
                                                     device=out.device))

    #: attributes of ``net`` that training rules use (output gain, per-mode reset), passed through
    DELEGATED = ("scale_outputs", "output_gain", "output_scaled", "reset_mode", "disjoint", "mode_axes")
    #: of those, the methods that a node model with a residual table replaces by its own ``_name``
    WITH_RESIDUAL = ("scale_outputs", "reset_mode", "mode_axes")

    def __getattr__(self, name: str):
        if name in NodeFeatures.DELEGATED:
            found = getattr(self.net, name)  # AttributeError when ``net`` has no such attribute
            if name in NodeFeatures.WITH_RESIDUAL and self.__dict__["_parameters"].get("residual") is not None:
                return getattr(self, "_" + name)  # the whole mode: the network's part and the table's column
            return found
        return super().__getattr__(name)

    @torch.no_grad()
    def _scale_outputs(self, factors: Tensor) -> None:
        """Multiply output ``l`` by ``factors[l]``: the network's gain and the table's column."""
        self.net.scale_outputs(factors)
        self.residual.mul_(factors.to(self.residual).reshape(1, -1))

    @torch.no_grad()
    def _reset_mode(self, mode: int, generator: torch.Generator) -> None:
        """The network's mode drawn afresh and the table's column back to zero."""
        self.net.reset_mode(mode, generator)
        self.residual[:, mode] = 0

    def _mode_axes(self) -> dict[str, int | None]:
        return {**{f"net.{k}": v for k, v in self.net.mode_axes().items()}, "residual": 1}

    def forward(self, index: Tensor) -> Tensor:
        if index.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"NodeFeatures expects integer node indices of shape (n,), got dtype {index.dtype}"
            )
        p = next(self.net.parameters(), None)
        index = index.reshape(-1)
        x = self.features[index]
        out = self.net(x.to(p.dtype) if p is not None else x)  # (n, L)
        if self.residual is not None:
            out = out + self.residual[index].to(out.dtype)
        if self.weight is None:
            return out
        return out * self.weight[index].to(out.dtype).unsqueeze(1)


def _as_csr(adjacency: sp.spmatrix | sp.sparray | np.ndarray | Tensor) -> sp.csr_array:
    a = adjacency.detach().cpu().numpy() if isinstance(adjacency, Tensor) else adjacency
    a = sp.csr_array(a, dtype=np.float64, copy=True)  # sorted and pruned below, never the caller's
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"adjacency must be a square (N, N) matrix with N >= 2, got shape {a.shape}")
    if not np.isfinite(a.data).all():
        raise ValueError("adjacency contains non-finite weights")
    if (a.data < 0).any():
        raise ValueError("adjacency weights must be non-negative")
    asym = abs(a - a.T).max() if a.nnz else 0.0
    if asym > 1e-12 * max(1.0, float(abs(a).max())):
        raise ValueError(f"adjacency must be symmetric (undirected graph); max |A - Aᵀ| = {asym:.3g}")
    a.sum_duplicates()
    a.eliminate_zeros()
    return a


class GraphOperator(Operator):
    """``(Tf)(i) = Σ_j M_ij f(j)`` on a graph (module docstring for the conventions).

    Args:
        adjacency: symmetric non-negative ``(N, N)`` weights (scipy.sparse, numpy or torch).
        features: optional node features ``(N, d)`` for :meth:`node_model`.
        normalized: ``M = D^{-1/2} A D^{-1/2}`` (default) or ``M = A``.
        replacement: draw batches of nodes with replacement (default) or without.
        shift: learn ``T = M - shift·I`` (default 0).
    """

    def __init__(
        self,
        adjacency: sp.spmatrix | sp.sparray | np.ndarray | Tensor,
        features: Tensor | np.ndarray | None = None,
        normalized: bool = True,
        replacement: bool = True,
        shift: float = 0.0,
    ):
        super().__init__()
        a = _as_csr(adjacency)
        n = a.shape[0]
        if normalized:
            degree = np.asarray(a.sum(1)).ravel()
            if (degree <= 0).any():
                raise ValueError(
                    f"normalized=True needs every node to have an edge; node "
                    f"{int(np.flatnonzero(degree <= 0)[0])} is isolated"
                )
            scale = sp.diags_array(1 / np.sqrt(degree))
            a = sp.csr_array(scale @ a @ scale)
            self.node_weight: Tensor | None = torch.from_numpy(np.sqrt(degree / degree.mean()))  # (N,)
        else:
            self.node_weight = None
        if not (isinstance(shift, (int, float)) and math.isfinite(shift)):
            raise ValueError(f"shift must be a finite number, got {shift!r}")
        self.matrix, self.normalized, self.num_nodes, self.shift = a, bool(normalized), n, float(shift)
        self.register_buffer("crow", torch.from_numpy(a.indptr.astype(np.int64)))
        self.register_buffer("col", torch.from_numpy(a.indices.astype(np.int64)))
        self.register_buffer("weight", torch.from_numpy(a.data))
        if features is not None:
            features = torch.as_tensor(features)
            if features.ndim != 2 or features.shape[0] != n:
                raise ValueError(f"features must be (N, d) = ({n}, d), got shape {tuple(features.shape)}")
        self.features = features
        self.sampler = Index(n, replacement)
        self._reference: dict[int, tuple[Tensor, Tensor]] = {}

    def node_model(self, net: nn.Module, residual: bool = True) -> NodeFeatures:
        """``net`` on the node features, as a model of node indices; for the normalized operator weighted by
        ``sqrt(d_i / mean d)`` (:class:`NodeFeatures`: ``net`` then learns the random walk's eigenvectors),
        plus a trainable per-node correction table (``residual``, default on: the graph's own eigenvectors
        exactly; ``residual=False`` when ``net`` alone must carry them, for new nodes)."""
        if self.features is None:
            raise ValueError(
                "this GraphOperator has no node features; pass features=(N, d) or use models.Tabular"
            )
        return NodeFeatures(net, self.features, self.node_weight, residual)

    def sample(self, n, generator=None, dtype=None):
        return self.sampler.sample(n, generator)

    def batch_is_population(self, batch_size, svd=False):
        return self.sampler.is_population(batch_size)

    def evaluation_is_iid(self, num_batches, batch_size, svd=False):
        return False

    def evaluation_batches(self, num_batches, batch_size, generator, dtype, svd=False):
        """All nodes once: estimates are exact, not sampled."""
        device = generator.device if generator is not None else self.crow.device
        yield torch.arange(self.num_nodes, device=device)

    def _apply_operator(self, f: Function, x: Tensor) -> tuple[Tensor, Tensor]:
        fx = f(x)  # (n, L)
        check_model_output(fx, x.shape[0])
        x = x.reshape(-1).to(self.crow.device)
        start, count = self.crow[x], self.crow[x + 1] - self.crow[x]  # (n,)
        row = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), count)  # (E,) row per edge
        offset = torch.cumsum(count, 0) - count  # (n,) first edge of each row in the flat list
        position = start[row] + torch.arange(row.shape[0], device=x.device) - offset[row]  # (E,) into col
        with torch.no_grad():
            nodes, inverse = torch.unique(self.col[position], return_inverse=True)
            f_neighbours = f(nodes)[inverse]  # (E, L)
            weighted = self.weight[position].to(f_neighbours).unsqueeze(1) * f_neighbours
            tfx = torch.zeros_like(fx).index_add_(0, row.to(fx.device), weighted.to(fx.device))
        return fx, tfx - self.shift * fx.detach()

    def eigenvalues_from_learned(self, eigenvalues: Tensor) -> Tensor:
        return eigenvalues + self.shift

    def quadrature(self) -> Quadrature:
        n = self.num_nodes
        return Quadrature(torch.arange(n), torch.full((n,), 1.0 / n, dtype=torch.float64))

    # -- reference spectrum ----------------------------------------------------------------------------------
    def _spectrum(self, num_modes: int) -> tuple[Tensor, Tensor]:
        """Top ``num_modes`` eigenvalues ``(L,)`` and unit eigenvectors ``(N, L)`` of ``M`` (float64).
        Default: ``eigsh`` (cached); subclasses with closed forms override."""
        if not 1 <= num_modes < self.num_nodes:
            raise ValueError(f"num_modes must be in [1, {self.num_nodes - 1}] for eigsh, got {num_modes}")
        if num_modes not in self._reference:
            v0 = np.random.default_rng(0).standard_normal(self.num_nodes)
            w, v = spla.eigsh(self.matrix, k=num_modes, which="LA", v0=v0)
            order = np.argsort(-w, kind="stable")
            self._reference[num_modes] = torch.from_numpy(w[order]), torch.from_numpy(v[:, order])
        return self._reference[num_modes]

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        return self._spectrum(num_modes)[0]

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        vectors = self._spectrum(num_modes)[1]
        return math.sqrt(self.num_nodes) * vectors[x.reshape(-1).cpu()].to(x.device)


# --- closed forms: products of paths and cycles ------------------------------------------------------------


def _path_spectrum(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Adjacency of the path on ``m`` nodes: eigenvalues ``2 cos(πk/(m+1))``, ``k = 1..m`` (descending),
    unit eigenvectors ``sqrt(2/(m+1)) sin(πkj/(m+1))`` as columns ``(m, m)``."""
    k = np.arange(1, m + 1)
    angle = np.pi * np.outer(np.arange(1, m + 1), k) / (m + 1)  # (j, k)
    return 2 * np.cos(np.pi * k / (m + 1)), math.sqrt(2 / (m + 1)) * np.sin(angle)


def _cycle_spectrum(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Adjacency of the cycle on ``m`` nodes: eigenvalues ``2 cos(2πk/m)`` with the constant (``k = 0``),
    then for each ``k = 1, 2, ..`` the pair ``sqrt(2/m) cos(2πkj/m)``, ``sqrt(2/m) sin(2πkj/m)`` (one
    alternating vector ``cos(πj)/sqrt(m)`` for ``k = m/2``), descending; vectors as columns ``(m, m)``."""
    j = np.arange(m)
    values, vectors = [2.0], [np.full(m, 1 / math.sqrt(m))]
    for k in range(1, m // 2 + 1):
        if 2 * k == m:
            values.append(-2.0)
            vectors.append(np.cos(np.pi * j) / math.sqrt(m))
            continue
        value = 2 * math.cos(2 * math.pi * k / m)
        values += [value, value]
        vectors += [
            math.sqrt(2 / m) * np.cos(2 * np.pi * k * j / m),
            math.sqrt(2 / m) * np.sin(2 * np.pi * k * j / m),
        ]
    return np.array(values), np.stack(vectors, 1)


class _ProductGraph(GraphOperator):
    """The Cartesian product of paths and cycles (``A = Σ_i I ⊗ .. ⊗ A_i ⊗ .. ⊗ I``; node index row-major),
    with its spectrum in closed form: eigenvalues are sums of the factors' (divided by the degree when
    normalized, for regular graphs), eigenvectors Kronecker products; ties keep the factors' order."""

    def __init__(self, sizes: Sequence[int], periodic: Sequence[bool], normalized: bool, replacement: bool):
        for m, ring in zip(sizes, periodic):
            check_positive_int("sizes", m, 3 if ring else 2, "cycle" if ring else "path")
        factors = [_cycle_spectrum(m) if ring else _path_spectrum(m) for m, ring in zip(sizes, periodic)]
        self.sizes, self.periodic = tuple(sizes), tuple(periodic)
        self._factors = factors
        if normalized and not all(periodic):
            raise ValueError(
                "the normalized operator of a grid with open boundaries has no closed form "
                "(irregular degrees); use periodic=True, normalized=False, or GraphOperator(adjacency)"
            )
        super().__init__(self._adjacency(), normalized=normalized, replacement=replacement)

    def _adjacency(self) -> sp.csr_array:
        total = sp.csr_array((int(np.prod(self.sizes)),) * 2)
        for i, (m, ring) in enumerate(zip(self.sizes, self.periodic)):
            a = sp.diags_array([np.ones(m - 1), np.ones(m - 1)], offsets=[-1, 1], shape=(m, m)).tolil()
            if ring:
                a[0, m - 1] = a[m - 1, 0] = 1.0
            term = sp.csr_array(np.ones((1, 1)))
            for k, size in enumerate(self.sizes):
                term = sp.kron(term, a if k == i else sp.eye_array(size), format="csr")
            total = total + term
        return sp.csr_array(total)

    def _spectrum(self, num_modes: int) -> tuple[Tensor, Tensor]:
        if not 1 <= num_modes <= self.num_nodes:
            raise ValueError(f"num_modes must be in [1, {self.num_nodes}], got {num_modes}")
        values = np.zeros(())
        for w, _ in self._factors:
            values = np.add.outer(values, w)  # (m_1, .., m_k)
        top = np.argsort(-values.ravel(), kind="stable")[:num_modes]
        indices = np.unravel_index(top, values.shape)  # per factor (L,)
        vectors = np.ones((1, num_modes))
        for (_, v), idx in zip(self._factors, indices):
            vectors = np.einsum("al,bl->abl", vectors, v[:, idx]).reshape(-1, num_modes)
        degree = 2 * len(self.sizes) if self.normalized else 1
        return torch.from_numpy(values.ravel()[top] / degree), torch.from_numpy(vectors)


class CycleGraph(_ProductGraph):
    """The cycle on ``n`` nodes: eigenvalues ``2 cos(2πk/n)`` of ``A`` (``cos(2πk/n)`` normalized), a
    constant top mode and degenerate pairs (cos, sin) after it."""

    def __init__(self, n: int, normalized: bool = True, replacement: bool = True):
        super().__init__((n,), (True,), normalized, replacement)


class GridGraph(_ProductGraph):
    """The ``rows × cols`` grid (4-neighbour; node ``r * cols + c``): eigenvalues of ``A`` are
    ``2 cos(πa/(rows+1)) + 2 cos(πb/(cols+1))`` (open) or ``2 cos(2πa/rows) + 2 cos(2πb/cols)``
    (``periodic``, a torus). ``normalized`` needs ``periodic`` (a regular graph, ``M = A/4``)."""

    def __init__(
        self, rows: int, cols: int, periodic: bool = False, normalized: bool = False, replacement: bool = True
    ):
        super().__init__((rows, cols), (periodic, periodic), normalized, replacement)
