"""Why modes die on untuned potentials, and what the warm start changes: per-mode Rayleigh quotients and
squared norms during training, with and without ``fit(warm_start=...)``.

A newcomer's call (library defaults): ``Schrodinger(V, dim=2, shift=9, sampler=Gaussian(2, std=2))`` with
the double well ``V = 4 (x0² − 1)² + x1²``, ``ParallelMLP(2, 4)``, ``NestedLoRA(4)``, 4000 steps, batch 256.
Every ``--every`` steps the callback evaluates ``‖f_l‖²`` and ``ρ_l = ⟨f_l, T f_l⟩ / ‖f_l‖²`` on a fixed
batch of 4096 points. Prints the initial quotients, the trajectories and the final energies against a 1D
finite-difference reference (the potential is separable), and draws the figure.

    python benchmarks/mode_collapse.py --seed 0 --plot docs/figures/mode-collapse.png
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

import neuralsvd as nsvd


def levels_1d(potential, lo: float = -8.0, hi: float = 8.0, n: int = 4000, k: int = 6) -> np.ndarray:
    """The k lowest eigenvalues of ``-d²/dx² + V`` on [lo, hi] (Dirichlet), second-order differences."""
    x = np.linspace(lo, hi, n)
    h = x[1] - x[0]
    return eigh_tridiagonal(2 / h**2 + potential(x), -np.ones(n - 1) / h**2, select="i", select_range=(0, k - 1))[0]


def reference(modes: int) -> np.ndarray:
    a, b = levels_1d(lambda s: 4 * (s**2 - 1) ** 2), levels_1d(lambda s: s**2)
    return np.sort(np.add.outer(a, b).ravel())[:modes]


def trajectory(warm_start: int | None, seed: int, steps: int, every: int, modes: int = 4) -> dict:
    op = nsvd.operators.Schrodinger(lambda x: 4 * (x[:, 0] ** 2 - 1) ** 2 + x[:, 1] ** 2, dim=2, shift=9.0,
                                    sampler=nsvd.sampling.Gaussian(dim=2, std=2.0))
    torch.manual_seed(seed)
    model = nsvd.models.ParallelMLP(2, modes)
    x = op.sample(4096, torch.Generator().manual_seed(123))

    def stats(m) -> tuple[list[float], list[float]]:
        with torch.no_grad():
            f, tf = op.apply(m, x)
        norms = f.pow(2).mean(0)
        return norms.tolist(), ((f * tf).mean(0) / norms).tolist()

    initial = stats(model)
    rows = []

    def callback(step, m):
        if step % every == 0:
            rows.append((step, *stats(m)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nsvd.fit(model, op, nsvd.NestedLoRA(modes), steps=steps, batch_size=256, seed=seed,
                          progress=False, warm_start=warm_start, log_every=every, callback=callback)
    return {"initial": initial, "rows": rows, "energies": result.eigenvalues.tolist(),
            "norm_ratio": result.extras["norm_ratio"], "warm_start_steps": result.extras["warm_start_steps"],
            "status": result.status}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("command: python benchmarks/mode_collapse.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    ref = reference(4)
    runs = {}
    for label, warm in (("warm_start=None", None), ("warm_start=1000 (default)", 1000)):
        r = runs[label] = trajectory(warm, args.seed, args.steps, args.every)
        print(f"\n{label}: initial ρ {np.round(r['initial'][1], 1).tolist()}, ‖f‖² {np.round(r['initial'][0], 2).tolist()}")
        print(f"  warm-start steps {r['warm_start_steps']}")
        for step, norms, rho in r["rows"][:: max(1, len(r["rows"]) // 8)]:
            print(f"  step {step:5d}  ‖f‖² {np.array2string(np.array(norms), precision=3)}  ρ {np.array2string(np.array(rho), precision=2)}")
        err = np.abs(np.array(r["energies"]) - ref) / np.abs(ref)
        print(f"  energies {np.round(r['energies'], 3).tolist()} vs reference {np.round(ref, 3).tolist()}: "
              f"max rel. error {err.max():.2e}; norm ratios {np.round(r['norm_ratio'], 3).tolist()}; status {r['status']}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
        for ax, (label, r) in zip(axes, runs.items()):
            steps = [row[0] for row in r["rows"]]
            norms = np.array([row[1] for row in r["rows"]])
            for mode in range(norms.shape[1]):
                ax.semilogy(steps, np.maximum(norms[:, mode], 1e-6), label=f"mode {mode}")
            ax.set_title(label)
            ax.set_xlabel("step")
        axes[0].set_ylabel("‖f_l‖² (fixed batch)")
        axes[0].legend()
        fig.suptitle(f"double well 4(x0²−1)² + x1², shift 9, N(0, 2²), defaults, seed {args.seed}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"figure written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
