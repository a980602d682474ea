"""How a finished run's modes are built: where their weight lies, and how ill-conditioned their outputs are.

For each run folder (written by ``neuralsvd run`` on a problem with closed-form eigenfunctions) and each
learned mode ``l`` this prints

* the squared overlap of the normalized learned function with each exact degenerate block among the
  first ``--exact`` eigenfunctions (blocks of equal eigenvalue, e.g. hydrogen's shells), and the weight
  ``outside`` all of them (``1 - Σ``: components along higher states, for a Schrödinger operator mostly
  high-energy ones that raise the Rayleigh quotient);
* the **cancellation ratio** of the output layer, ``‖w_l‖ · rms‖h_l‖ / rms|w_l·h_l + b_l|`` on fresh
  samples (``h_l`` the last hidden layer of mode ``l``'s network): about ``sqrt(H / 2)`` for random
  weights, ``≥ 1`` always, and large when a small output is the difference of large terms. A step of
  fixed size on ``w_l`` (what Adam takes) then moves the output by that ratio times more, relative to
  its size, than in a well-conditioned network.

    python benchmarks/output_conditioning.py runs/hydrogen-seq runs/hydrogen-neuralef --exact 25

Models with disjoint per-mode networks (:class:`neuralsvd.ParallelMLP`) only; the inner products use the
operator's quadrature, as ``metrics.json`` does.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings

import torch
from torch import Tensor, nn

import neuralsvd as nsvd
from neuralsvd.numerics import metrics
from neuralsvd.training.evaluation import inner_products


def _mlp(model: nn.Module) -> nn.Module:
    """The per-mode MLP inside a (possibly wrapped) read-out model."""
    seen = [model]
    while seen:
        m = seen.pop()
        if hasattr(m, "out_weight") and getattr(m, "disjoint", False):
            return m
        seen.extend(m.children())
    raise ValueError("the run's model has no disjoint per-mode MLP (ParallelMLP)")


def cancellation_ratio(mlp: nn.Module, x: Tensor) -> Tensor:
    """``‖w_l‖ · rms‖h_l‖ / rms|w_l·h_l + b_l|`` per mode, ``(L,)``, on points ``x (n, d)``."""
    with torch.no_grad():
        h = mlp.hidden(x)[0]  # (L, n, H)
    w = mlp.out_weight[..., 0]  # (L, H)
    out = torch.einsum("lnh,lh->ln", h, w) + mlp.out_bias[:, :, 0]  # (L, n)
    return w.norm(dim=1) * h.square().sum(-1).mean(-1).sqrt() / out.square().mean(-1).sqrt()


def block_weights(result: nsvd.FitResult, num_exact: int) -> tuple[Tensor, list[list[int]]]:
    """Squared overlaps of each normalized learned mode with each exact block, ``(L, B)``, and the blocks."""
    op = result.operator.double()
    gram, cross, _ = inner_products(lambda p: result.eigenfunctions(p).double(), op.exact_eigenfunctions,
                                    op.quadrature(), num_exact)
    blocks = metrics.degenerate_blocks(op.exact_eigenvalues(num_exact).double())
    c2 = (cross / gram.diagonal().sqrt()[:, None]).square()  # (L, K)
    return torch.stack([c2[:, b].sum(1) for b in blocks], 1), blocks


def report(run_dir: str, num_exact: int, samples: int) -> dict:
    result = nsvd.load(run_dir)
    weights, blocks = block_weights(result, num_exact)
    x = result.operator.sample(samples, torch.Generator().manual_seed(0))
    ratio = cancellation_ratio(_mlp(result.model), x)
    return {"run": run_dir, "blocks": blocks, "block_weights": weights.tolist(),
            "outside": (1 - weights.sum(1)).tolist(), "cancellation_ratio": ratio.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--exact", type=int, default=25, help="exact eigenfunctions to project on")
    parser.add_argument("--samples", type=int, default=4096, help="sampler points for the cancellation ratio")
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args(argv)
    print("command: python benchmarks/output_conditioning.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for run in args.runs:
            rec = report(run, args.exact, args.samples)
            records.append(rec)
            print(f"\n{run}\nmode | weight in exact blocks 1..{len(rec['blocks'])} | outside | cancellation ratio")
            for l, (w, out, r) in enumerate(zip(rec["block_weights"], rec["outside"], rec["cancellation_ratio"])):
                print(f"{l:4d} | {' '.join(f'{v:.1e}' for v in w)} | {out:.1e} | {r:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"records": records}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
