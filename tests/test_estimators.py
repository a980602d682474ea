"""scikit-learn style estimators: sklearn's common checks, and agreement with KernelPCA, SpectralEmbedding
and CCA (independent solvers) on small data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import KernelPCA
from sklearn.manifold import SpectralEmbedding
from sklearn.utils.estimator_checks import parametrize_with_checks

from neuralsvd.estimators import NeuralCCA, NeuralEigenmap, NeuralSpectralEmbedding


TINY = dict(steps=5, hidden=(8,), batch_size=16, random_state=0)


@parametrize_with_checks(
    [
        NeuralEigenmap(2, **TINY),
        NeuralEigenmap(2, kernel="poly", center=False, **TINY),
        NeuralSpectralEmbedding(2, n_neighbors=5, **TINY),
        NeuralCCA(2, **TINY),
    ]
)
def test_sklearn_common_checks(estimator, check):
    """All of scikit-learn's common checks that apply run (none is expected to fail); the array-API check
    skips itself without SCIPY_ARRAY_API (torch models take numpy input only)."""
    check(estimator)


def _abs_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a * b).sum(0)) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


def test_neural_eigenmap_matches_kernel_pca():
    """Centered RBF kernel on 300 Gaussian points: eigenvalues_ = KernelPCA.eigenvalues_ / N, and the
    eigenfunctions on 100 held-out points match KernelPCA's (Nyström) projections, normalized."""
    x = np.random.default_rng(0).normal(size=(400, 2))
    train, test = x[:300], x[300:]
    ours = NeuralEigenmap(3, gamma=0.5, steps=1500, random_state=0).fit(train)
    kpca = KernelPCA(3, kernel="rbf", gamma=0.5).fit(train)
    np.testing.assert_allclose(ours.eigenvalues_, kpca.eigenvalues_ / 300, rtol=1e-2)
    theirs = kpca.transform(test) * np.sqrt(300 / kpca.eigenvalues_)  # unit mean square on the training set
    assert (_abs_cosines(ours.transform(test), theirs) > 0.98).all()
    assert (
        ours.transform(test).shape == (100, 3)
        and ours.get_feature_names_out().tolist()[0] == "neuraleigenmap0"
    )


def test_neural_spectral_embedding_matches_sklearn():
    """Same k-NN graph as SpectralEmbedding; the 2D embedding spans the same subspace (a near-degenerate pair
    for isotropic data: compare spans) as D^{1/2} SpectralEmbedding.embedding_; it extends to new points."""
    x = np.random.default_rng(1).normal(size=(300, 2))
    ours = NeuralSpectralEmbedding(2, n_neighbors=10, shift=0.95, steps=2500, random_state=0).fit(x)
    se = SpectralEmbedding(2, affinity="nearest_neighbors", n_neighbors=10, random_state=0).fit(x)
    assert abs(ours.affinity_matrix_ - se.affinity_matrix_).max() == 0
    degree = np.asarray(se.affinity_matrix_.sum(1)).ravel()
    theirs = se.embedding_ * np.sqrt(degree)[:, None]  # ∝ eigenvectors of D^{-1/2} A D^{-1/2}
    q_ours, q_theirs = np.linalg.qr(ours.embedding_)[0], np.linalg.qr(theirs)[0]
    assert 1 - np.linalg.norm(q_ours.T @ q_theirs) ** 2 / 2 < 2e-2
    a = se.affinity_matrix_.toarray()
    exact = np.linalg.eigvalsh(a / np.sqrt(np.outer(degree, degree)))[::-1][1:3]
    np.testing.assert_allclose(ours.eigenvalues_, exact, atol=5e-3)
    np.testing.assert_allclose(ours.transform(x[:5]), ours.embedding_[:5], rtol=1e-12)


def test_neural_cca_matches_cca_on_gaussian_views():
    """Jointly Gaussian views with canonical correlations (0.9, 0.5): the top nonlinear mode is CCA's first
    canonical pair (σ_1 = ρ_1), and NeuralCCA's next mode is He_2 of it (σ = 0.81 > ρ_2 = 0.5)."""
    cov = np.eye(4)
    cov[0, 2] = cov[2, 0] = 0.9
    cov[1, 3] = cov[3, 1] = 0.5
    z = np.random.default_rng(0).multivariate_normal(np.zeros(4), cov, size=2000)
    x, y = z[:, :2], z[:, 2:]
    ours = NeuralCCA(2, steps=1000, random_state=0).fit(x, y)
    cca = CCA(1).fit(x, y)
    xs, ys = cca.transform(x, y)
    rho = np.corrcoef(xs[:, 0], ys[:, 0])[0, 1]
    assert abs(ours.singular_values_[0] - rho) < 1e-2
    assert abs(np.corrcoef(ours.transform(x)[:, 0], xs[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(ours.transform_y(y)[:, 0], ys[:, 0])[0, 1]) > 0.99
    assert ours.singular_values_[1] > 0.6  # He_2(u_1): 0.81 in the population, beyond linear CCA's 0.5
    left, right = ours.transform(x[:4], y[:4])  # CCA's signature: both views
    np.testing.assert_allclose(left, ours.transform(x[:4]))
    np.testing.assert_allclose(right, ours.transform_y(y[:4]))


def test_estimator_errors():
    with pytest.raises(ValueError, match="unknown kernel 'gauss'"):
        NeuralEigenmap(2, kernel="gauss", steps=1).fit(np.zeros((10, 2)) + np.arange(10)[:, None])
    with pytest.raises(ValueError, match="n_components=5 must be below n_samples=5"):
        NeuralEigenmap(5, steps=1).fit(np.random.default_rng(0).normal(size=(5, 2)))
    fitted = NeuralCCA(1, **TINY).fit(np.random.default_rng(0).normal(size=(20, 2)), np.arange(20.0))
    with pytest.raises(ValueError, match="Y has 2 features"):
        fitted.transform_y(np.zeros((3, 2)))
