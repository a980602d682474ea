"""Numerics: derivatives (jets, Hutchinson), quadrature, sampling, reference solvers, potential expressions, subspace metrics."""
