"""Graph operators: closed-form cycle/grid spectra vs numpy, neighbourhood sums vs dense products, the eigsh
reference, fits on the cycle (closed form) and on a k-NN graph of sklearn's digits (scipy eigsh)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import neuralsvd as nsvd
from neuralsvd.operators import CycleGraph, GraphOperator, GridGraph
from neuralsvd.problems import get_problem
from neuralsvd.problems.presets import PROBLEMS

F64 = torch.float64


def _random_graph(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(n, n, density=0.15, random_state=seed, data_rvs=lambda k: rng.uniform(0.5, 2.0, k))
    a = a + a.T + sp.diags_array(np.ones(n - 1), offsets=1, shape=(n, n))  # a path keeps every node connected
    return sp.csr_array(a + a.T)


@pytest.mark.parametrize(
    "op",
    [
        CycleGraph(64),
        CycleGraph(9, normalized=False),
        CycleGraph(8, normalized=False),
        GridGraph(5, 7),
        GridGraph(4, 6, periodic=True, normalized=True),
    ],
    ids=["cycle64-normalized", "cycle9", "cycle8", "grid5x7", "torus4x6-normalized"],
)
def test_closed_form_spectra_match_numpy(op):
    dense = op.matrix.toarray()
    L = min(12, op.num_nodes)
    values = op.exact_eigenvalues(L).numpy()
    np.testing.assert_allclose(values, np.linalg.eigvalsh(dense)[::-1][:L], atol=1e-12)
    phi = op.exact_eigenfunctions(torch.arange(op.num_nodes), L).numpy()  # (N, L), √N v
    np.testing.assert_allclose(dense @ phi, phi * values, atol=1e-12)
    np.testing.assert_allclose(phi.T @ phi / op.num_nodes, np.eye(L), atol=1e-12)


def test_cycle_spectrum_formula():
    op = CycleGraph(64)
    k = np.array([0, 1, 1, 2, 2, 3, 3, 4])
    np.testing.assert_allclose(op.exact_eigenvalues(8).numpy(), np.cos(2 * np.pi * k / 64), atol=1e-15)
    assert nsvd.metrics.degenerate_blocks(op.exact_eigenvalues(8)) == [[0], [1, 2], [3, 4], [5, 6], [7]]


def test_grid_is_the_product_of_paths():
    op = GridGraph(3, 4)
    paths = [2 * np.cos(np.pi * np.arange(1, m + 1) / (m + 1)) for m in (3, 4)]
    expected = np.sort(np.add.outer(*paths).ravel())[::-1]
    np.testing.assert_allclose(op.exact_eigenvalues(12).numpy(), expected, atol=1e-12)
    assert op.matrix.sum(1).tolist() == [2, 3, 3, 2, 3, 4, 4, 3, 2, 3, 3, 2]  # degrees of a 3×4 grid


@pytest.mark.parametrize("normalized", [True, False])
def test_neighbourhood_sums_equal_dense_products(normalized):
    a = _random_graph()
    op = GraphOperator(a, normalized=normalized)
    dense = a.toarray()
    if normalized:
        d = dense.sum(1)
        dense = dense / np.sqrt(np.outer(d, d))
    table = torch.randn(40, 3, dtype=F64)
    x = torch.tensor([5, 0, 39, 5, 17])  # repeated nodes are fine
    fx, tfx = op.apply(lambda i: table[i], x)
    np.testing.assert_allclose(tfx.numpy(), (dense @ table.numpy())[x.numpy()], atol=1e-12)
    np.testing.assert_allclose(fx.numpy(), table[x].numpy())


def test_eigsh_reference_matches_numpy():
    op = GraphOperator(_random_graph(seed=3))
    w, v = np.linalg.eigh(op.matrix.toarray())
    np.testing.assert_allclose(op.exact_eigenvalues(5).numpy(), w[::-1][:5], atol=1e-10)
    phi = op.exact_eigenfunctions(torch.arange(40), 5).numpy() / math.sqrt(40)
    np.testing.assert_allclose(np.abs((phi * v[:, ::-1][:, :5]).sum(0)), 1.0, atol=1e-10)


def test_node_features_model_and_errors():
    feats = torch.randn(40, 3, dtype=F64)
    op = GraphOperator(_random_graph(), features=feats)
    net = torch.nn.Linear(3, 2)
    model = op.node_model(net)
    idx = torch.tensor([1, 7])
    a = _random_graph()
    degree = torch.as_tensor(np.asarray(a.sum(1)).ravel())
    weight = (degree / degree.mean()).sqrt()[idx].float().unsqueeze(1)  # normalized M: sqrt(d_i / mean d)
    torch.testing.assert_close(model(idx), weight * net(feats[idx].float()))
    plain = GraphOperator(a, features=feats, normalized=False).node_model(net)
    torch.testing.assert_close(plain(idx), net(feats[idx].float()))
    with pytest.raises(ValueError, match="no node features"):
        GraphOperator(_random_graph()).node_model(net)
    with pytest.raises(ValueError, match="integer node indices"):
        model(torch.zeros(2))
    with pytest.raises(ValueError, match="symmetric"):
        GraphOperator(np.triu(np.ones((4, 4)), 1))
    with pytest.raises(ValueError, match="non-negative"):
        GraphOperator(-np.ones((3, 3)))
    with pytest.raises(ValueError, match="node 2 is isolated"):
        GraphOperator(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0.0]]))
    with pytest.raises(ValueError, match="no closed form"):
        GridGraph(3, 3, normalized=True)


def test_node_weight_makes_the_random_walk_eigenvectors_the_network_target():
    """The eigenvectors of D^-1/2 A D^-1/2 divided by the node weight are those of the random walk D^-1 A
    (the top one constant): what the network on node features has to learn."""
    a = _random_graph(seed=3)
    op = GraphOperator(a, features=np.zeros((40, 1)))
    w, v = np.linalg.eigh(op.matrix.toarray())
    u = v[:, ::-1][:, :3] / op.node_weight.numpy()[:, None]  # (N, 3)
    walk = np.asarray(a.toarray() if hasattr(a, "toarray") else a)
    walk = walk / walk.sum(1, keepdims=True)
    np.testing.assert_allclose(walk @ u, u * w[::-1][:3], atol=1e-10)
    np.testing.assert_allclose(u[:, 0] / u[0, 0], 1.0, atol=1e-10)


def _fit_tabular(op, modes, steps, lr):
    torch.manual_seed(0)
    return nsvd.fit(
        nsvd.models.Tabular(op.num_nodes, modes).double(),
        op,
        nsvd.NestedLoRA(modes),  # the whole population: exact moments by default
        steps=steps,
        batch_size=op.num_nodes,
        lr=lr,
        progress=False,
    )


def test_cycle_graph_acceptance():
    """Issue 5 acceptance: n = 64, 8 modes (the constant, three cos/sin pairs, one of the fourth pair):
    eigenvalues within 1e-3 of cos(2πk/64). Whole-population batches, exact gradients."""
    result = _fit_tabular(CycleGraph(64, replacement=False), 8, 1500, 0.1)
    with pytest.warns(UserWarning, match="splits a degenerate eigenspace"):
        report = nsvd.evaluate(result)
    assert report["max_eigenvalue_relative_error"] < 1e-3
    assert max(report["subspace_distance_blocks"][:-1]) < 1e-4  # complete blocks; the last is split


def test_cycle_graph_preset_iid_batches():
    """The CLI preset (9 modes: complete eigenspaces): i.i.d. node batches and the split-batch (unbiased)
    loss reach the closed form too."""
    problem = get_problem("cycle-graph")
    config = problem.default_config()
    op = problem.build_operator(config.operator)
    torch.manual_seed(0)
    t = config.train
    result = nsvd.fit(problem.build_model(config, op), op, nsvd.NestedLoRA(config.modes), steps=t.steps,
                      batch_size=t.batch_size, lr=t.lr, progress=False)
    report = nsvd.evaluate(result)
    assert report["blocks"] == [[0], [1, 2], [3, 4], [5, 6], [7, 8]]
    assert report["max_eigenvalue_relative_error"] < 1e-3
    assert report["subspace_distance_all"] < 1e-3


@pytest.fixture(scope="module")
def digits_graph():
    from sklearn.datasets import load_digits
    from sklearn.neighbors import kneighbors_graph

    x = load_digits().data
    knn = kneighbors_graph(x, 10, include_self=False)
    return sp.csr_array(knn.maximum(knn.T)), x


def test_digits_knn_graph_against_eigsh(digits_graph):
    """Independent check on real data: the top 4 eigenpairs of the normalized 10-NN graph of the digits vs
    scipy's eigsh. The eigenvalues cluster below 1 (Laplacian eigenvalues 0, 2.8e-3, 6.0e-3, 8.0e-3): the
    operator learns M - 0.98 I, and the Laplacian eigenvalues 1 - λ are compared relatively."""
    adjacency, _ = digits_graph
    n = adjacency.shape[0]
    op = GraphOperator(adjacency, replacement=False, shift=0.98)
    degree = adjacency.sum(1)
    m = sp.diags_array(degree**-0.5) @ adjacency @ sp.diags_array(degree**-0.5)
    w, v = spla.eigsh(m, k=4, which="LA", v0=np.ones(n))
    w, v = w[::-1], v[:, ::-1]
    result = _fit_tabular(op, 4, 1500, 0.05)
    np.testing.assert_allclose(1 - result.eigenvalues.numpy()[1:], 1 - w[1:], rtol=2e-3)
    learned = result.eigenfunctions(torch.arange(n)).numpy() / math.sqrt(n)
    assert (np.abs((learned * v).sum(0)) > 0.999).all()


def test_node_function_plot(tmp_path):
    op = CycleGraph(16, replacement=False)
    result = _fit_tabular(op, 3, 50, 0.1)
    config = get_problem("cycle-graph").default_config()
    PROBLEMS["cycle-graph"].plot(result, config, tmp_path / "nodes.png")
    assert (tmp_path / "nodes.png").stat().st_size > 0


def test_node_model_passes_the_networks_output_gain_and_reset_through():
    """fit's rules size and re-draw modes through ``scale_outputs``/``reset_mode``: a node model has them
    exactly when its network has them."""
    op = GraphOperator(_random_graph(), features=torch.randn(40, 2))
    model = op.node_model(nsvd.models.ParallelMLP(2, 3, hidden=(8,)))
    idx = torch.arange(40)
    before = model(idx)
    assert not bool(model.output_scaled)
    model.scale_outputs(torch.tensor([2.0, 1.0, 0.5]))
    assert bool(model.output_scaled) and model.disjoint
    assert torch.allclose(model(idx), before * torch.tensor([2.0, 1.0, 0.5]))
    model.reset_mode(1, torch.Generator().manual_seed(0))
    after = model(idx)
    assert torch.equal(after[:, [0, 2]], (before * torch.tensor([2.0, 1.0, 0.5]))[:, [0, 2]])
    assert not torch.allclose(after[:, 1], before[:, 1])
    plain = op.node_model(torch.nn.Linear(2, 3))
    assert not hasattr(plain, "scale_outputs") and not hasattr(plain, "reset_mode")


def test_residual_node_model_scales_resets_and_declares_its_table():
    """With the per-node table, sizing and re-drawing act on the whole mode (network and table column),
    and SpIN's layout names every parameter."""
    op = GraphOperator(_random_graph(), features=torch.randn(40, 2))
    model = op.node_model(nsvd.models.ParallelMLP(2, 3, hidden=(8,)))
    assert model.residual.shape == (40, 3) and not bool(model.residual.any())
    with torch.no_grad():
        model.residual.normal_(generator=torch.Generator().manual_seed(1))
    idx = torch.arange(40)
    before = model(idx)
    factors = torch.tensor([2.0, 1.0, 0.5])
    model.scale_outputs(factors)
    torch.testing.assert_close(model(idx), before * factors)
    model.reset_mode(1, torch.Generator().manual_seed(0))
    assert not bool(model.residual[:, 1].any()) and bool(model.residual[:, 0].any())
    torch.testing.assert_close(model(idx)[:, [0, 2]], (before * factors)[:, [0, 2]])
    assert set(model.mode_axes()) == {name for name, _ in model.named_parameters()}
    assert model.mode_axes()["residual"] == 1
    plain = op.node_model(torch.nn.Linear(2, 3))
    assert not hasattr(plain, "scale_outputs") and not hasattr(plain, "reset_mode")
    assert op.node_model(torch.nn.Linear(2, 3), residual=False).residual is None


def test_residual_node_model_learns_eigenvectors_its_features_cannot_explain():
    """Features that say nothing about the graph (random, independent of the edges): with defaults the
    node model still learns the top eigenvalues of ``D^-1/2 A D^-1/2`` (numpy eigh), through its table;
    the network alone (``residual=False``) cannot."""
    a = _random_graph(n=60, seed=4).toarray()
    inv = 1 / np.sqrt(a.sum(1))
    exact = np.linalg.eigvalsh(inv[:, None] * a * inv[None, :])[::-1][:3]
    op = GraphOperator(a, features=torch.randn(60, 2, generator=torch.Generator().manual_seed(2)), shift=0.3)

    def top(residual: bool) -> np.ndarray:
        torch.manual_seed(0)
        model = op.node_model(nsvd.models.ParallelMLP(2, 3, hidden=(32, 32)), residual=residual)
        res = nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=1500, batch_size=60, progress=False)
        return res.eigenvalues.double().numpy()

    np.testing.assert_allclose(top(True), exact, rtol=0, atol=1e-3)
    assert np.abs(top(False) - exact).max() > 2e-2
