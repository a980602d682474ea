"""Numerics: derivatives (jets, Hutchinson), quadrature, sampling, Coulomb cusps, reference solvers, potential
expressions, subspace metrics."""
