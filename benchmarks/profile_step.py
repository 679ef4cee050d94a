"""Where a training step (or inference pass) spends its time, op by op.

    python benchmarks/profile_step.py [--arch seed] [--batch 64] [--steps 300]
    python benchmarks/profile_step.py --model mnist     # a bench_models.py model
    python benchmarks/profile_step.py --model lenet --inference --batch 1000 --steps 5

Wraps every Function's ``forward`` and ``backward`` (and the optimizer step)
in a timer, runs warm training steps on one batch, and prints each op's
milliseconds per step, largest first, and what is left for the engine and
Python. The timers add about a microsecond per call; the shares are what to
read, since this 2-core virtual machine's speed drifts by 10-20 % over minutes.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402  (before NumPy: it sets BLAS thread settings NumPy reads)
import numpy as np  # noqa: E402
from minidl import nn, optim  # noqa: E402
from minidl.models import CNNAttention  # noqa: E402
from minidl.nn import functional as F  # noqa: E402
from minidl.tensor import Function  # noqa: E402

import bench_models  # noqa: E402  (its models, written once for both frameworks)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def instrument(totals):
    """Time each Function subclass's own forward and backward into ``totals``
    (a fused op's call of its base class's method counts as the fused op's)."""
    depth = [0]

    def timed(cls, name, method):
        def wrapper(self, *args):
            start = time.perf_counter()
            depth[0] += 1
            try:
                return method(self, *args)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    totals[f"{cls.__name__}.{name}"] += time.perf_counter() - start
        return wrapper

    for cls in set(_subclasses(Function)):
        for name in ("forward", "backward"):
            if name in cls.__dict__:
                setattr(cls, name, timed(cls, name, cls.__dict__[name]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="seed", choices=["seed", "default"])
    p.add_argument("--model", choices=sorted(bench_models.MODELS),
                   help="profile this user-written model of bench_models.py instead")
    p.add_argument("--inference", action="store_true", help="eval-mode forward, no_grad")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)

    minidl.manual_seed(0)
    shape, loss_fn, name = (1, 28, 28), F.cross_entropy, args.arch
    if args.model:
        model, shape, loss = bench_models.build(args.model, nn, F)
        loss_fn, name = getattr(F, loss), args.model
    else:
        model = CNNAttention(args.arch)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = minidl.Tensor(rng.random((args.batch, *shape), dtype=np.float32))
    y = minidl.Tensor(rng.integers(0, 10, args.batch))
    totals = collections.defaultdict(float)

    def step():
        if args.inference:
            with minidl.no_grad():
                model(x)
            return
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        start = time.perf_counter()
        opt.step()
        totals["optimizer step"] += time.perf_counter() - start

    model.train(not args.inference)

    for _ in range(min(20, args.steps)):
        step()
    instrument(totals)
    for _ in range(min(5, args.steps)):
        step()
    totals.clear()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps * 1e3
    print(f"{name}, batch {args.batch}{', inference' if args.inference else ''}: "
          f"{per_step:.3f} ms per step "
          f"({args.batch / per_step * 1e3:,.0f} img/s), {minidl.get_num_threads()} threads")
    measured = 0.0
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        ms = seconds / args.steps * 1e3
        measured += ms
        print(f"  {name:<28}{ms:8.3f} ms  {100 * ms / per_step:5.1f} %")
    rest = per_step - measured
    print(f"  {'engine, modules, Python':<28}{rest:8.3f} ms  {100 * rest / per_step:5.1f} %")


if __name__ == "__main__":
    main()
