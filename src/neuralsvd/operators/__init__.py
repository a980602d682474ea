"""Operators ``T`` the library can decompose; conventions in :mod:`neuralsvd.operators.base`."""

from . import kernels
from .base import CrossOperator, Operator
from .box_laplacian import BoxLaplacian
from .dense import DenseOperator
from .graph import CycleGraph, GraphOperator, GridGraph, NodeFeatures
from .hydrogen3d import Hydrogen3D
from .kernel import GaussianRBF, KernelOperator, NystromExtension, nystrom
from .paired import ConstantFirst, GaussianPairs, PairedOperator, PairedSamples, cross_view_retrieval
from .schrodinger import HarmonicOscillator, Hydrogen2D, Schrodinger
from .trajectory import Trajectories, TrajectoryOperator

__all__ = [
    "Operator", "CrossOperator", "Schrodinger", "Hydrogen2D", "HarmonicOscillator", "DenseOperator",
    "BoxLaplacian", "Hydrogen3D",
    # defined by data: kernels, graphs, paired samples
    "kernels", "KernelOperator", "GaussianRBF", "NystromExtension", "nystrom",
    "GraphOperator", "CycleGraph", "GridGraph", "NodeFeatures",
    "PairedOperator", "PairedSamples", "GaussianPairs", "ConstantFirst", "cross_view_retrieval",
    # defined by trajectories: Koopman / transfer operators
    "Trajectories", "TrajectoryOperator",
]
