"""Data-parallel training on this machine, and what more machines would give.

    python benchmarks/bench_distributed.py                  # default arch, global batch 64
    python benchmarks/bench_distributed.py --arch seed --json out.json

Measures CNN+Attention training with the same global batch in two layouts:
one process with 2 threads, and ``mpiexec -n 2`` ranks with 1 thread each
(half the batch per rank, gradients averaged by DistributedDataParallel).
Each window is a fresh process (or pair) that warms up, then times
``--steps`` steps; the windows alternate A B A B (a rank waiting in MPI
spins on its core, so a pair left idle beside the other layout would slow
it) and the median window of each is reported: images/s, and the
allreduce's share of a 2-rank step, split into the wait for the slower rank,
the allreduce itself and the copies into and out of the flat buffer.

It then estimates, with a ring-allreduce cost model, the speed-up of N
machines, each running one rank like those measured here (the per-rank
batch, one thread), over one machine: a step takes the measured compute time
t_c of such a rank (its step less the wait, the allreduce and the copies),
plus the measured copies, plus the ring allreduce of S bytes,
``2 (N-1) (alpha + S / (N B))`` at link bandwidth B and per-message latency
alpha (the gradients do not overlap the backward pass: they are reduced when
it ends). Speed-up = N t_c / (t_c + copies + allreduce). The 1-thread rank is
the basis because it is what this shared machine measures most steadily: a
2-thread process slows down many times over when other work takes a core.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

# The networks of the estimate: (name, bits/s, per-message latency in s).
NETWORKS = [("10 Gb/s Ethernet (TCP, 25 us)", 10e9, 25e-6),
            ("100 Gb/s (RDMA, 5 us)", 100e9, 5e-6)]
MACHINES = (2, 8, 64)


# ------------------------------------------------------------------ worker

def worker(args):
    """One window: warm up, time ``steps`` steps; rank 0 prints a JSON line."""
    import minidl   # before NumPy, as every minidl program
    import numpy as np
    from minidl import distributed, optim
    from minidl.models import CNNAttention, num_parameters
    from minidl.nn import functional as F
    from minidl.nn.parallel import DistributedDataParallel

    distributed.init()
    n = distributed.world_size()
    if args.batch_size % n:
        raise SystemExit(f"--batch-size {args.batch_size} does not split over {n} ranks")
    per_rank = args.batch_size // n
    minidl.manual_seed(0)
    model = DistributedDataParallel(CNNAttention(args.arch))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(distributed.rank())
    x = minidl.tensor(rng.standard_normal((per_rank, 1, 28, 28)).astype(np.float32))
    y = minidl.tensor(rng.integers(0, 10, per_rank))

    # time the parts of the gradient averaging: the wait for the slower rank
    # (a barrier first), the allreduce, and the rest (copies in and out)
    times = {"wait": 0.0, "allreduce": 0.0, "average": 0.0}
    reduce, average = distributed.all_reduce, model.average_gradients

    def timed_reduce(buffer, *rest):
        start = time.perf_counter()
        distributed.barrier()
        middle = time.perf_counter()
        reduce(buffer, *rest)
        times["wait"] += middle - start
        times["allreduce"] += time.perf_counter() - middle

    def timed_average():
        start = time.perf_counter()
        average()
        times["average"] += time.perf_counter() - start

    distributed.all_reduce = timed_reduce
    object.__setattr__(model, "average_gradients", timed_average)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    for key in times:
        times[key] = 0.0
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    flat = model._flat
    if distributed.is_main():
        steps = args.steps
        print(json.dumps({
            "ranks": n, "threads_per_rank": minidl.get_num_threads(),
            "images_per_s": args.batch_size * steps / seconds,
            "step_ms": 1e3 * seconds / steps,
            "wait_ms": 1e3 * times["wait"] / steps,
            "allreduce_ms": 1e3 * times["allreduce"] / steps,
            "copies_ms": 1e3 * (times["average"] - times["wait"] - times["allreduce"]) / steps,
            "parameters": num_parameters(model.module),
            "reduced_bytes": None if flat is None else int(flat.nbytes)}), flush=True)


# ------------------------------------------------------------------ driver

def run_window(args, ranks, threads=None):
    """One window in fresh processes (``threads`` per rank: minidl's choice when
    None); rank 0's JSON result."""
    script = [sys.executable, os.path.abspath(__file__), "--worker", "--arch", args.arch,
              "--batch-size", str(args.batch_size), "--steps", str(args.steps),
              "--warmup", str(args.warmup)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MINIDL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    if threads is not None:   # else minidl.distributed gives each rank its share of the cores
        env["MINIDL_NUM_THREADS"] = str(threads)
    cmd = script if ranks == 1 else [args.mpiexec, "-n", str(ranks), *script]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"bench_distributed.py: the {ranks}-rank window failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(windows):
    return {key: statistics.median(w[key] for w in windows) for key in windows[0]
            if isinstance(windows[0][key], (int, float)) and windows[0][key] is not None}


def ring_allreduce_s(machines, nbytes, bits_per_s, latency):
    """Ring allreduce of ``nbytes`` over ``machines``: a reduce-scatter and an
    all-gather, each N-1 steps sending 1/N of the buffer."""
    if machines == 1:
        return 0.0
    return 2 * (machines - 1) * (latency + nbytes / machines / (bits_per_s / 8))


def estimate(compute_ms, copies_ms, nbytes):
    rows = []
    for name, bits, latency in NETWORKS:
        for n in MACHINES:
            reduce_ms = 1e3 * ring_allreduce_s(n, nbytes, bits, latency)
            step = compute_ms + copies_ms + reduce_ms
            rows.append({"network": name, "machines": n, "allreduce_ms": reduce_ms,
                         "step_ms": step, "speedup": n * compute_ms / step,
                         "efficiency": compute_ms / step})
    return rows


def report(result):
    one, two = result["1x%d" % result["threads"]], result["2x1"]
    over = result.get("2x%d" % result["threads"])
    lines = [
        f"arch {result['arch']}, global batch {result['batch_size']}, "
        f"{result['parameters']:,} parameters ({result['reduced_bytes']:,} bytes reduced "
        f"per step), medians of {result['windows']} windows of {result['steps']} steps",
        "",
        "| layout | images/s | step (ms) | wait for the other rank (ms) | allreduce (ms) | "
        "copies (ms) | share of the step |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| 1 process x {result['threads']} threads | {one['images_per_s']:,.0f} | "
        f"{one['step_ms']:.2f} | | | | |",
        *([f"| 2 ranks x {result['threads']} threads each (no share of the cores) | "
           f"{over['images_per_s']:,.0f} | {over['step_ms']:.2f} | {over['wait_ms']:.2f} | "
           f"{over['allreduce_ms']:.3f} | {over['copies_ms']:.3f} | |"] if over else []),
        f"| 2 ranks x 1 thread | {two['images_per_s']:,.0f} | {two['step_ms']:.2f} | "
        f"{two['wait_ms']:.2f} | {two['allreduce_ms']:.3f} | {two['copies_ms']:.3f} | "
        f"{100 * (two['wait_ms'] + two['allreduce_ms'] + two['copies_ms']) / two['step_ms']:.1f} % |",
        "",
        f"The local allreduce moved {result['reduced_bytes']:,} bytes in "
        f"{two['allreduce_ms']:.3f} ms ({result['local_gb_per_s']:.2f} GB/s).",
        "",
        f"Estimate for machines that each compute like one rank here (batch "
        f"{result['batch_size'] // 2}, 1 thread: {result['compute_ms']:.2f} ms a step; copies "
        f"{two['copies_ms']:.3f} ms):",
        "",
        "| network | machines | ring allreduce (ms) | step (ms) | speed-up | efficiency |",
        "|---|---:|---:|---:|---:|---:|"]
    for row in result["estimate"]:
        lines.append(f"| {row['network']} | {row['machines']} | {row['allreduce_ms']:.2f} | "
                     f"{row['step_ms']:.2f} | {row['speedup']:.1f}x | "
                     f"{100 * row['efficiency']:.0f} % |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="default", choices=["default", "seed"])
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--threads", type=int, default=2, help="threads of the 1-process layout")
    p.add_argument("--steps", type=int, default=30, help="timed steps per window")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--windows", type=int, default=3, help="windows per layout (alternated)")
    p.add_argument("--oversubscribed", action="store_true",
                   help="also 2 ranks of --threads threads each (what each rank would start "
                   "without minidl's share of the cores)")
    p.add_argument("--mpiexec", default=None, help="default: the one beside this Python")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    args.mpiexec = args.mpiexec or (beside if os.path.exists(beside) else shutil.which("mpiexec"))
    if args.mpiexec is None:
        raise SystemExit("bench_distributed.py: no mpiexec: pip install 'minidl[distributed]'")
    # (ranks, threads per rank): None = minidl's share of the cores
    layouts = [(1, args.threads), (2, None)] + ([(2, args.threads)] if args.oversubscribed else [])
    windows = {layout: [] for layout in layouts}
    for _ in range(args.windows):
        for layout in layouts:
            windows[layout].append(run_window(args, *layout))
    one, two = medians(windows[1, args.threads]), medians(windows[2, None])
    nbytes = windows[2, None][0]["reduced_bytes"]
    result = {"arch": args.arch, "batch_size": args.batch_size, "threads": args.threads,
              "steps": args.steps, "windows": args.windows,
              "parameters": windows[2, None][0]["parameters"], "reduced_bytes": nbytes,
              f"1x{args.threads}": one, "2x1": two,
              "compute_ms": two["step_ms"] - two["wait_ms"] - two["allreduce_ms"] -
              two["copies_ms"],
              "local_gb_per_s": nbytes / (two["allreduce_ms"] * 1e-3) / 1e9,
              "networks": [{"name": n, "bits_per_s": b, "latency_s": a} for n, b, a in NETWORKS]}
    if args.oversubscribed:
        result[f"2x{args.threads}"] = medians(windows[2, args.threads])
    result["estimate"] = estimate(result["compute_ms"], two["copies_ms"], nbytes)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
