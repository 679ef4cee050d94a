"""Where a training step of CNN+Attention spends its time, op by op.

    python benchmarks/profile_step.py [--arch seed] [--batch 64] [--steps 300]

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
from minidl import optim  # noqa: E402
from minidl.models import CNNAttention  # noqa: E402
from minidl.nn import functional as F  # noqa: E402
from minidl.tensor import Function  # noqa: E402


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def instrument(totals):
    """Time each Function subclass's own forward and backward into ``totals``."""
    def timed(cls, name, method):
        def wrapper(self, *args):
            start = time.perf_counter()
            try:
                return method(self, *args)
            finally:
                totals[f"{cls.__name__}.{name}"] += time.perf_counter() - start
        return wrapper

    for cls in set(_subclasses(Function)):
        for name in ("forward", "backward"):
            if name in cls.__dict__:
                setattr(cls, name, timed(cls, name, cls.__dict__[name]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="seed", choices=["seed", "default"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)

    minidl.manual_seed(0)
    model = CNNAttention(args.arch)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = minidl.Tensor(rng.random((args.batch, 1, 28, 28), dtype=np.float32))
    y = minidl.Tensor(rng.integers(0, 10, args.batch))
    totals = collections.defaultdict(float)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        start = time.perf_counter()
        opt.step()
        totals["optimizer step"] += time.perf_counter() - start

    for _ in range(20):
        step()
    instrument(totals)
    for _ in range(5):
        step()
    totals.clear()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps * 1e3
    print(f"{args.arch}, batch {args.batch}: {per_step:.3f} ms per step "
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
