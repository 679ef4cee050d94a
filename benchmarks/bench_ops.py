"""Forward+backward time of conv2d and max_pool2d: minidl (Numba), minidl
(NumPy only) and PyTorch CPU with the same thread count, in one run.

    python benchmarks/bench_ops.py [--threads N] [--repeat R] [--rounds K] [--quick] [--json PATH]
    python benchmarks/bench_ops.py --cnn-shapes [--batch N] [...]

``--json PATH`` also writes the results there (``-`` for stdout), as
``benchmarks/run_all.py`` reads them: rows of ``name``, ``numba_ms``,
``numpy_ms``, ``torch_ms`` and ``ratio`` (torch / Numba). ``--quick``
runs a tiny batch a few times (a smoke test, not a measurement).

Shapes: the model's layers at batch 64 (conv 1->8 and 8->16, 3x3 pad 1, on
28x28 and 14x14; 2x2 max pooling on both) and a larger conv (32->64 on
28x28). The first conv's input needs no gradient (it is the image), as in
the model. Each model layer gets its input, and its output gradient, in the
layout that framework's own neighbouring layers produce in the model:
PyTorch's are contiguous NCHW; minidl's convs return C-major arrays (see
``minidl.kernels.common``), so the pools and the second conv get those. The
larger conv gets plain NCHW arrays in both, as a user's tensors would be.

``--cnn-shapes`` times instead the convolutions of the CNNs users write
(3x3 and 5x5, with and without padding, 1 to 64 channels, 28x28 and 32x32
inputs; ``--batch`` sets N, default 64), each also with minidl's im2col
algorithm forced (column ``im2col ms``; ``numba ms`` is what conv2d chooses).
A first conv gets an N-major image batch; later ones get the layout the
framework's previous conv gives.

Each figure is the fastest of R timed forward+backward steps after warm-up
(the minimum, as ``timeit`` advises: on a shared 2-core machine the median
mostly measures the neighbours; the load average is printed alongside), and
the best of K rounds; each round times every case in minidl, then in
PyTorch, so a slow spell of the machine falls on both. Numba's compile time
is excluded there and reported apart: the time a fresh process takes to
import minidl and finish its first conv forward+backward, with the on-disk
cache (warm) and without it (cold). Ratios are torch time / minidl time:
above 1 means minidl is faster.

PyTorch runs in a worker process (``--only torch``, answering one case at a
time on stdin): imported into the same process its OpenMP runtime made
Numba's 2-thread kernels 3-4x slower, which would measure the cohabitation,
not minidl. Before each timing the other process's threads get a moment to
go idle.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

# minidl sets its thread settings (OMP_WAIT_POLICY, OPENBLAS_THREAD_TIMEOUT; see
# minidl.backend) when imported, before NumPy loads its BLAS. The PyTorch child
# gets the caller's environment unchanged (see caller_env).
from caller_env import (CALLER_ENV, restore_thread_settings,  # noqa: E402  (before minidl)
                        torch_worker_env)
from worker_process import WorkerProcess  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402
import numpy as np  # noqa: E402
from minidl import backend  # noqa: E402
from minidl.ops.conv import conv2d, conv_algorithm, max_pool2d  # noqa: E402

def cases(N):
    """(name, op, input shape, weight shape (conv), input needs grad, model layout)
    at batch N; ``model layout``: minidl gets C-major arrays, as in the model."""
    return [
        ("conv 1->8 28x28", "conv", (N, 1, 28, 28), (8, 1, 3, 3), False, True),
        ("pool 2x2 8@28x28", "pool", (N, 8, 28, 28), None, True, True),
        ("conv 8->16 14x14", "conv", (N, 8, 14, 14), (16, 8, 3, 3), True, True),
        ("pool 2x2 16@14x14", "pool", (N, 16, 14, 14), None, True, True),
        ("conv 32->64 28x28", "conv", (N, 32, 28, 28), (64, 32, 3, 3), True, False),
    ]


def _c_major(a):
    """The same (N, C, H, W) values stored C-major, as minidl's convs return them."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)



def cnn_cases(N):
    """The convs of user-written CNNs: (name, "conv", input shape, weight shape,
    input needs grad, minidl's C-major layout, padding)."""
    return [
        ("mnist 1->32 3x3 p0 28", "conv", (N, 1, 28, 28), (32, 1, 3, 3), False, False, 0),
        ("mnist 32->64 3x3 p0 26", "conv", (N, 32, 26, 26), (64, 32, 3, 3), True, True, 0),
        ("lenet 3->6 5x5 p0 32", "conv", (N, 3, 32, 32), (6, 3, 5, 5), False, False, 0),
        ("lenet 6->16 5x5 p0 14", "conv", (N, 6, 14, 14), (16, 6, 5, 5), True, False, 0),
        ("vgg 3->32 3x3 p1 32", "conv", (N, 3, 32, 32), (32, 3, 3, 3), False, False, 1),
        ("vgg 32->32 3x3 p1 32", "conv", (N, 32, 32, 32), (32, 32, 3, 3), True, True, 1),
        ("vgg 32->64 3x3 p1 16", "conv", (N, 32, 16, 16), (64, 32, 3, 3), True, True, 1),
        ("vgg 64->64 3x3 p1 16", "conv", (N, 64, 16, 16), (64, 64, 3, 3), True, True, 1),
        ("16->32 5x5 p2 28", "conv", (N, 16, 28, 28), (32, 16, 5, 5), True, True, 2),
    ]


MODEL_CASES = 4   # the first four are the model's shapes (target 1.5x); the last 0.8x


def _best_times(steps, repeat, warmup=3):
    """Fastest time of each step over ``repeat`` runs, one contender after the
    other (interleaving them let one pool's spin-waiting threads slow the next
    contender's step)."""
    best = {}
    for name, step in steps.items():
        with getattr(step, "selected", contextlib.nullcontext)():
            for _ in range(warmup):
                step()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        best[name] = min(times)
    return best


class _Kernels:
    """A step run with the Numba or the NumPy kernels selected (``selected()``).

    The NumPy kernels run as they do for a user with ``MINIDL_NUMBA=0``: with
    BLAS on ``threads`` threads of its own (the Numba path holds NumPy's
    OpenBLAS to one thread per call and splits the GEMMs itself)."""

    def __init__(self, step, numba, threads, algorithm="auto"):
        self.step, self.numba, self.threads = step, numba, threads
        self.algorithm = algorithm

    @contextlib.contextmanager
    def selected(self):
        with contextlib.ExitStack() as stack:
            stack.enter_context(backend.use_numba(self.numba))
            stack.enter_context(conv_algorithm(self.algorithm))
            if not self.numba:
                import threadpoolctl
                stack.enter_context(threadpoolctl.threadpool_limits(self.threads,
                                                                    user_api="blas"))
            yield

    def __call__(self):
        self.step()


def _conv_out(xs, ws, padding):
    return (xs[0], ws[0], xs[2] + 2 * padding - ws[2] + 1, xs[3] + 2 * padding - ws[3] + 1)


def minidl_step(case, rng):
    _, op, xs, ws, x_grad, model_layout = case[:6]
    padding = case[6] if len(case) > 6 else 1
    layout = _c_major if model_layout else np.ascontiguousarray
    x = minidl.Tensor(layout(rng.standard_normal(xs).astype(np.float32)), requires_grad=x_grad)
    if op == "conv":
        w = minidl.Tensor((rng.standard_normal(ws) * 0.1).astype(np.float32), requires_grad=True)
        b = minidl.Tensor(np.zeros(ws[0], np.float32), requires_grad=True)
        gy = layout(rng.standard_normal(_conv_out(xs, ws, padding)).astype(np.float32))
        params = [x, w, b]

        def step():
            for p in params:
                p.grad = None
            conv2d(x, w, b, padding=padding).backward(gy)
    else:
        gy = layout(rng.standard_normal((xs[0], xs[1], xs[2] // 2, xs[3] // 2))
                    .astype(np.float32))

        def step():
            x.grad = None
            max_pool2d(x, 2).backward(gy)
    return step


def torch_step(case, rng, torch):
    _, op, xs, ws, x_grad, _ = case[:6]
    padding = case[6] if len(case) > 6 else 1
    F = torch.nn.functional
    x = torch.tensor(rng.standard_normal(xs).astype(np.float32), requires_grad=x_grad)
    if op == "conv":
        w = torch.tensor((rng.standard_normal(ws) * 0.1).astype(np.float32), requires_grad=True)
        b = torch.zeros(ws[0], requires_grad=True)
        gy = torch.tensor(rng.standard_normal(_conv_out(xs, ws, padding)).astype(np.float32))
        params = [x, w, b]

        def step():
            for p in params:
                p.grad = None
            F.conv2d(x, w, b, padding=padding).backward(gy)
    else:
        gy = torch.tensor(rng.standard_normal((xs[0], xs[1], xs[2] // 2,
                                               xs[3] // 2)).astype(np.float32))

        def step():
            x.grad = None
            F.max_pool2d(x, 2).backward(gy)
    return step


_FIRST_CONV = """
import time; t0 = time.perf_counter()
import numpy as np, minidl
from minidl.ops.conv import conv2d, max_pool2d
x = minidl.Tensor(np.ones((2, 1, 28, 28), np.float32))
w = minidl.Tensor(np.ones((8, 1, 3, 3), np.float32), requires_grad=True)
y = max_pool2d(conv2d(x, w, padding=1), 2)
y.backward(np.ones(y.shape, np.float32))
print(time.perf_counter() - t0)
"""


def first_conv_seconds(cache: bool) -> float:
    """Seconds a fresh process takes to import minidl and run its first conv
    + pool forward+backward (Numba on), with or without Numba's disk cache."""
    env = dict(os.environ, MINIDL_NUMBA="1", MINIDL_NUMBA_CACHE="1" if cache else "0")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _FIRST_CONV], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


SETTLE_SECONDS = 0.2


class TorchWorker(WorkerProcess):
    """PyTorch in a child process: ``best(i, repeat)`` times case i there."""

    def __init__(self, threads, quick, extra=()):
        cmd = [sys.executable, os.path.abspath(__file__), "--only", "torch", "--threads",
               str(threads)] + (["--quick"] if quick else []) + list(extra)
        super().__init__("torch", cmd, torch_worker_env())
        self.version = self.read()["torch"]

    def best(self, index, repeat):
        return self.request(f"{index} {repeat}")["seconds"]


def torch_worker(threads, batch, case_list):
    """The child's loop: build every case once, then time the ones asked for."""
    restore_thread_settings()   # PyTorch as its users run it (see caller_env)
    import torch
    torch.set_num_threads(threads)
    steps = [torch_step(case, np.random.default_rng(0), torch) for case in case_list(batch)]
    print(json.dumps({"torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        index, repeat = (int(v) for v in line.split())
        best = _best_times({"t": steps[index]}, repeat)["t"]
        print(json.dumps({"seconds": best}), flush=True)


def _torch_available():
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True,
                           env=CALLER_ENV)
    return probe.returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for minidl (Numba + BLAS) and torch (default: all cores)")
    parser.add_argument("--repeat", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each timing every case in minidl then in PyTorch")
    parser.add_argument("--quick", action="store_true", help="batch 4, 2 repeats: smoke test")
    parser.add_argument("--cnn-shapes", action="store_true",
                        help="the convs of user-written CNNs instead (see the docstring)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--only", choices=["minidl", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON "
                                                       "('-': stdout)")
    args = parser.parse_args(argv)
    batch, repeat, rounds = (4, 2, 1) if args.quick else (args.batch, args.repeat, args.rounds)
    case_list = cnn_cases if args.cnn_shapes else cases

    if args.only == "torch":   # before set_num_threads: it would start Numba's OpenMP pool
        return torch_worker(args.threads or minidl.get_num_threads(), batch, case_list)
    threads = minidl.set_num_threads(args.threads)

    compile_cold = compile_warm = None
    if backend.numba_available() and not args.quick and not args.cnn_shapes:
        # fresh processes: the cold one compiles with the cache off; the untimed one
        # then fills the cache that the warm one reads
        compile_cold = first_conv_seconds(cache=False)
        first_conv_seconds(cache=True)
        compile_warm = first_conv_seconds(cache=True)

    extra = ["--batch", str(batch)] + (["--cnn-shapes"] if args.cnn_shapes else [])
    worker = TorchWorker(threads, args.quick, extra) if _torch_available() else None
    torch_version = worker.version if worker else None
    load = os.getloadavg()
    contenders = []   # per case: {column: step}
    for case in case_list(batch):
        rng = np.random.default_rng(0)
        steps = {}
        if backend.numba_available():
            steps["numba_ms"] = _Kernels(minidl_step(case, rng), True, threads)
            if args.cnn_shapes:
                steps["im2col_ms"] = _Kernels(minidl_step(case, rng), True, threads, "im2col")
        if not args.cnn_shapes:
            steps["numpy_ms"] = _Kernels(minidl_step(case, rng), False, threads)
        contenders.append(steps)
    best = [{} for _ in contenders]
    try:
        for _ in range(rounds):
            for i, steps in enumerate(contenders):
                for name, seconds in _best_times(steps, repeat).items():
                    best[i][name] = min(best[i].get(name, np.inf), seconds)
                if worker:
                    time.sleep(SETTLE_SECONDS)
                    seconds = worker.best(i, repeat)
                    best[i]["torch_ms"] = min(best[i].get("torch_ms", np.inf), seconds)
                    time.sleep(SETTLE_SECONDS)
    finally:
        if worker:
            worker.close()
    rows = []
    for case, times in zip(case_list(batch), best):
        row = {"name": case[0], **{k: 1e3 * v for k, v in times.items()}}
        if worker:
            mine = row.get("numba_ms", row.get("numpy_ms"))
            row["ratio"] = row["torch_ms"] / mine
            if "numpy_ms" in row:
                row["ratio_numpy"] = row["torch_ms"] / row["numpy_ms"]
        rows.append(row)

    result = {"threads": threads, "batch": batch, "repeat": repeat, "rounds": rounds,
              "load_average": [round(load[0], 2), round(os.getloadavg()[0], 2)],
              "torch": torch_version, "numpy": np.__version__,
              "numba": backend.numba_available(), "rows": rows,
              "first_conv_fresh_process_s": {"numba_cache": compile_warm,
                                             "no_cache": compile_cold}}
    if worker and backend.numba_available() and not args.cnn_shapes:
        result["model_shapes_ratio"] = (sum(r["torch_ms"] for r in rows[:MODEL_CASES]) /
                                        sum(r["numba_ms"] for r in rows[:MODEL_CASES]))
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
            return result
        with open(args.json, "w") as f:
            f.write(text + "\n")

    def fmt(v, spec, suffix=""):
        return f"{'-':>{spec[:2]}}" if v is None else format(v, spec) + suffix

    print(f"forward+backward, float32, batch {batch}, {threads} thread(s), best of {repeat} "
          f"x {rounds} rounds; "
          f"load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    other, other_ratio = ("im2col", "torch/im2col") if args.cnn_shapes else ("numpy",
                                                                               "torch/numpy")
    print(f"{'case':<24}{'numba ms':>10}{other + ' ms':>11}{'torch ms':>10}"
          f"{'torch/numba':>13}{other_ratio:>14}")
    for r in rows:
        theirs = r.get(f"{other}_ms")
        other_speed = r["torch_ms"] / theirs if theirs and "torch_ms" in r else None
        print(f"{r['name']:<24}{fmt(r.get('numba_ms'), '10.2f')}"
              f"{fmt(theirs, '11.2f')}{fmt(r.get('torch_ms'), '10.2f')}"
              f"{fmt(r.get('ratio'), '12.2f', 'x')}{fmt(other_speed, '13.2f', 'x')}")
    if "model_shapes_ratio" in result:
        print(f"model shapes together: torch/numba = {result['model_shapes_ratio']:.2f}x "
              f"(target >= 1.5x); large conv: {rows[-1]['ratio']:.2f}x (target >= 0.8x)")
    if compile_warm is not None:
        print(f"fresh process to its first conv+pool forward+backward: {compile_warm:.2f} s "
              f"with Numba's cache (target < 2 s), {compile_cold:.2f} s compiling from scratch")
    return result


if __name__ == "__main__":
    main()
