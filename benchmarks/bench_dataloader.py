"""DataLoader worker processes: batches per second of minidl's and PyTorch's loaders.

The dataset stands for one that reads files: each sample costs ``--sample-ms``
of waiting (a sleep) plus a 28x28 array; batches of 64. Each framework runs
in its own process (``--worker``); their epochs alternate, A B A B, so the
machine's drift falls on both alike. Each row is the median epoch time for
``num_workers`` = 0, 2, 4 and the ratio minidl/torch (above 1: minidl slower).
Worker start-up is part of every epoch (neither loader keeps its workers).

    python benchmarks/bench_dataloader.py               # a table
    python benchmarks/bench_dataloader.py --json F.json # one JSON object, to a file
    python benchmarks/bench_dataloader.py --quick       # tiny, a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from caller_env import restore_thread_settings, torch_worker_env  # noqa: E402
from worker_process import WorkerProcess  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(framework):
    """Answer ``workers samples sample_ms`` lines with one epoch's seconds."""
    import numpy as np
    if framework == "torch":
        restore_thread_settings()
        from torch.utils.data import DataLoader, Dataset
    else:
        sys.path.insert(0, os.path.join(HERE, ".."))
        from minidl.utils.data import DataLoader, Dataset

    class Files(Dataset):
        def __init__(self, n, seconds):
            self.n, self.seconds = n, seconds

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            time.sleep(self.seconds)
            return np.full((1, 28, 28), i % 251, np.float32), np.int64(i % 10)

    for line in sys.stdin:
        workers, samples, sample_ms = line.split()
        loader = DataLoader(Files(int(samples), float(sample_ms) / 1000), batch_size=64,
                            num_workers=int(workers))
        t0 = time.perf_counter()
        batches = sum(1 for _ in loader)
        print(json.dumps({"seconds": time.perf_counter() - t0, "batches": batches}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--samples", type=int, default=1280)
    parser.add_argument("--sample-ms", type=float, default=1.0)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="64 samples, workers 0 and 2, "
                        "1 window")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--worker", choices=["minidl", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.quick:
        args.samples, args.workers, args.windows = 64, [0, 2], 1
    script = os.path.abspath(__file__)
    procs = {"minidl": WorkerProcess("minidl", [sys.executable, script, "--worker", "minidl"],
                                     dict(os.environ))}
    try:
        import torch  # noqa: F401
        procs["torch"] = WorkerProcess("torch", [sys.executable, script, "--worker", "torch"],
                                       torch_worker_env())
    except ImportError:
        pass
    rows = []
    try:
        for n in args.workers:
            request = f"{n} {args.samples} {args.sample_ms}"
            times = {name: [] for name in procs}
            for _ in range(args.windows):
                for name, proc in procs.items():
                    times[name].append(proc.request(request)["seconds"])
            row = {"num_workers": n, **{f"{k}_s": statistics.median(v) for k, v in times.items()}}
            row["ratio"] = row["minidl_s"] / row["torch_s"] if "torch_s" in row else None
            rows.append(row)
    finally:
        for proc in procs.values():
            proc.close()
    result = {"samples": args.samples, "sample_ms": args.sample_ms, "batch_size": 64,
              "windows": args.windows, "cpus": os.cpu_count(), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    print(f"{args.samples} samples of {args.sample_ms} ms each, batch 64, median of "
          f"{args.windows} alternated epochs")
    for row in rows:
        torch_part = (f"   torch {row['torch_s']:6.3f} s   ratio {row['ratio']:.2f}x"
                      if row.get("torch_s") else "   (torch not installed)")
        print(f"  num_workers={row['num_workers']}   minidl {row['minidl_s']:6.3f} s{torch_part}")
    return result


if __name__ == "__main__":
    main()
