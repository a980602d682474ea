"""Memory of training on a memory-mapped trajectory file against its length.

For each length ``T`` writes one 2D Ornstein–Uhlenbeck trajectory ``(T, 2)`` float32 as ``.npy`` (in chunks,
never whole in memory), then in a fresh process builds ``TrajectoryOperator(path, lag)`` (the file is
opened with ``np.load(mmap_mode="r")`` and checked for NaN chunk by chunk), trains ``NestedLoRA`` for
``--steps`` steps and reads out the singular values, while a thread samples the process's memory from
``/proc/self/status``. Prints per length: file size, peak ``RssAnon`` (the process's own memory: what must
stay flat) and peak ``RssFile`` (pages of the mapped file the kernel keeps in its page cache; reclaimable
at will, they grow with what was read, up to the file size), and the wall time.

    python benchmarks/trajectory_memory.py --frames 100000 10000000 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, threading, time, torch
torch.set_num_threads(1)
import neuralsvd as nsvd
from neuralsvd.models import ParallelMLP
from neuralsvd.operators import TrajectoryOperator

peak = {"RssAnon": 0, "RssFile": 0}
done = threading.Event()

def poll():
    while not done.is_set():
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]))
        time.sleep(0.02)

threading.Thread(target=poll, daemon=True).start()
path, steps = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
op = TrajectoryOperator(path, lag=5)
torch.manual_seed(0)
model = op.pinned_model(ParallelMLP(2, 3, hidden=(32, 32), activation="sin"))
result = nsvd.fit(model, op, nsvd.NestedLoRA(4), steps=steps, batch_size=512, progress=False)
wall = time.perf_counter() - t0
time.sleep(0.1)
done.set()
print(json.dumps({"rss_anon_kib": peak["RssAnon"], "rss_file_kib": peak["RssFile"], "wall_s": wall,
                  "singular_values": result.singular_values.tolist()}))
"""


def write_ou(path: Path, frames: int, chunk: int = 1_000_000, seed: int = 0) -> None:
    """An OU trajectory ``(frames, 2)`` (rates 0.1, 0.05 per frame, exact transitions) written chunk by chunk."""
    from scipy.signal import lfilter

    a = np.exp(-np.array([0.1, 0.05]))
    b = np.sqrt(1 - a**2)
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(frames, 2))
    x = rng.standard_normal(2)  # the frame before the chunk
    for start in range(0, frames, chunk):
        n = min(chunk, frames - start)
        noise = b * rng.standard_normal((n, 2))
        for i in range(2):  # x_t = a x_{t-1} + noise_t, continued from the previous chunk's last frame
            out[start : start + n, i] = lfilter([1.0], [1.0, -a[i]], noise[:, i], zi=[a[i] * x[i]])[0]
        x = np.asarray(out[start + n - 1], dtype=np.float64)
    out.flush()
    del out


def measure(frames: int, steps: int, folder: Path) -> dict:
    """Write a ``frames``-long trajectory into ``folder``, train on it in a fresh process, remove the file;
    the child's peaks (KiB), wall time and singular values, and the file size (bytes)."""
    path = folder / f"ou{frames}.npy"
    write_ou(path, frames)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    row = {**json.loads(out.strip().splitlines()[-1]), "file_bytes": path.stat().st_size}
    path.unlink()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100_000, 10_000_000])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    print("command: python benchmarks/trajectory_memory.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    print(f"{'frames':>12} {'file MiB':>9} {'peak RssAnon MiB':>17} {'peak RssFile MiB':>17} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for frames in args.frames:
            row = measure(frames, args.steps, Path(tmp))
            print(f"{frames:>12} {row['file_bytes'] / 2**20:>9.1f} {row['rss_anon_kib'] / 1024:>17.1f} "
                  f"{row['rss_file_kib'] / 1024:>17.1f} {row['wall_s']:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
