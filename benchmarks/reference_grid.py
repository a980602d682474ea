"""Accuracy and cost of the finite-difference reference solver against closed forms, per grid size.

For each problem and middle grid ``n`` (the solver uses n/2, n and 2n points per axis on the automatic
box), prints the largest relative error over the modes of the finest grid's energies and of the
extrapolated ones, the largest stated error (``error_estimate / |E|``), the smallest ratio
``stated / true error of the finest grid`` (≥ 1: the statement is conservative), the orders used and the
wall time. Problems: the 2D isotropic oscillator (10 modes), the 2D hydrogen atom (4 modes: the 1s cusp
converges at about first order on a uniform grid), Pöschl–Teller ``-12 sech²(x0)`` ⊕ oscillator
(5 modes).

    python benchmarks/reference_grid.py --points 32 64 128
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from neuralsvd.numerics.potential_expr import parse_potential
from neuralsvd.numerics.reference_grid import auto_box, solve_reference
from neuralsvd.operators import HarmonicOscillator, Hydrogen2D


def _poschl_teller() -> tuple:
    exact = np.sort([-(3 - n) ** 2 + 2 * m + 1 for n in range(3) for m in range(6)])[:5]
    return parse_potential("-12/cosh(x0)**2 + x1**2", 2), exact


PROBLEMS = {
    "oscillator2d": lambda: (HarmonicOscillator(dim=2).potential, HarmonicOscillator(dim=2).exact_eigenvalues(10).numpy()),
    "hydrogen2d": lambda: (Hydrogen2D().potential, Hydrogen2D().exact_eigenvalues(4).numpy()),
    "poschl-teller+osc": _poschl_teller,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[32, 64, 128], help="middle grids (multiples of 4)")
    parser.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated ({', '.join(PROBLEMS)})")
    args = parser.parse_args(argv)
    print(f"{'problem':<18} {'n':>4} {'box':>6} {'finest':>9} {'extrap.':>9} {'stated':>9} {'stated/true':>11} "
          f"{'orders':<18} {'seconds':>7}")
    for name in args.problems.split(","):
        potential, exact = PROBLEMS[name]()
        box, _ = auto_box(potential, 2, len(exact))
        for n in args.points:
            t0 = time.perf_counter()
            sol = solve_reference(potential, 2, box.half_width, n, len(exact))
            seconds = time.perf_counter() - t0
            scale = np.abs(exact)
            true_fine = np.abs(sol.energies - exact)
            orders = ",".join("-" if np.isnan(p) else f"{p:.2g}" for p in np.unique(sol.order.round(2)))
            print(f"{name:<18} {n:>4} {box.half_width:>6.2f} {(true_fine / scale).max():>9.2e} "
                  f"{(np.abs(sol.extrapolated - exact) / scale).max():>9.2e} {(sol.error_estimate / scale).max():>9.2e} "
                  f"{(sol.error_estimate / true_fine).min():>11.2f} {orders:<18} {seconds:>7.1f}")
    print("command: " + shlex.join(["python", "benchmarks/reference_grid.py", *(argv if argv is not None else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
