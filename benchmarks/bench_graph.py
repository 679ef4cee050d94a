"""Graph overhead: forward+backward of a 1000-op elementwise chain on 64x64.

The chain cycles through mul, add, tanh and sub (constants are Python
floats, so each op is one node); the same chain runs in PyTorch CPU when
torch is installed. The ratio minidl/torch is minidl's per-node overhead
relative to PyTorch's C++ autograd; per-node microseconds are printed too.

    python benchmarks/bench_graph.py               # a table
    python benchmarks/bench_graph.py --json        # one JSON object on stdout
    python benchmarks/bench_graph.py --json F.json # ... written to a file (run_all.py)
    python benchmarks/bench_graph.py --quick       # 100 ops, 3 repeats (a smoke test)

JSON keys: ``minidl_ms``, ``torch_ms``, ``ratio`` (minidl / torch; above 1
means minidl is slower), per-op microseconds, and the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from caller_env import restore_thread_settings  # noqa: E402  (before minidl)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minidl  # noqa: E402  (before NumPy: it sets BLAS thread settings NumPy reads)
import numpy as np  # noqa: E402


def chain(x, n_ops, tanh):
    y = x
    for i in range(n_ops):
        k = i % 4
        if k == 0:
            y = y * 1.0001
        elif k == 1:
            y = y + 0.001
        elif k == 2:
            y = tanh(y)
        else:
            y = y - 0.0005
    return y.sum()


def time_alternating(steps, repeats, warmup=2):
    """(median, min) seconds of each step, timed A B A B ... so that the machine's
    drift over the run falls on both alike."""
    for step in steps:
        for _ in range(warmup):
            step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, own in zip(steps, times):
            t0 = time.perf_counter()
            step()
            own.append(time.perf_counter() - t0)
    return [(statistics.median(t), min(t)) for t in times]


def minidl_step(data, n_ops):
    def step():
        x = minidl.tensor(data, requires_grad=True)
        chain(x, n_ops, minidl.tanh).backward()
        return x.grad
    return step


def torch_step(data, n_ops):
    """The same chain in PyTorch, or None without torch. The thread settings minidl
    changed are put back first (PyTorch as its users run it; see caller_env)."""
    restore_thread_settings()
    try:
        import torch
    except ImportError:
        return None

    def step():
        x = torch.tensor(data, requires_grad=True)
        chain(x, n_ops, torch.tanh).backward()
        return x.grad
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="100 ops, 3 repeats")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="emit one JSON object, to stdout or to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.ops, args.repeats = 100, 3

    data = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    steps = [minidl_step(data, args.ops), torch_step(data, args.ops)]
    timed = time_alternating([s for s in steps if s is not None], args.repeats)
    (m_med, m_min), t = timed[0], (timed[1] if len(timed) > 1 else None)
    result = {
        "ops": args.ops, "shape": [args.size, args.size], "dtype": "float32",
        "repeats": args.repeats, "numpy": np.__version__,
        "minidl_ms": m_med * 1e3, "minidl_min_ms": m_min * 1e3,
        "minidl_us_per_op": m_med / args.ops * 1e6,
        "torch_ms": t[0] * 1e3 if t else None, "torch_min_ms": t[1] * 1e3 if t else None,
        "torch_us_per_op": t[0] / args.ops * 1e6 if t else None,
        "ratio": m_med / t[0] if t else None,
    }
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
        return result
    print(f"forward+backward, {args.ops}-op elementwise chain on {args.size}x{args.size} float32 "
          f"(median of {args.repeats})")
    print(f"  minidl     {m_med * 1e3:8.2f} ms   {result['minidl_us_per_op']:6.1f} us/op")
    if t:
        print(f"  torch CPU  {t[0] * 1e3:8.2f} ms   {result['torch_us_per_op']:6.1f} us/op")
        print(f"  ratio minidl/torch: {result['ratio']:.2f}x")
    else:
        print("  torch not installed: no ratio")
    return result


if __name__ == "__main__":
    main()
