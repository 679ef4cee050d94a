"""Training and inference throughput of CNN+Attention: minidl against PyTorch CPU/CUDA.

    python benchmarks/bench_train.py                     # both archs, batches 32/64/256
    python benchmarks/bench_train.py --arch seed --batch-sizes 64 --json out.json
    python benchmarks/bench_train.py --device cuda       # CuPy against PyTorch CUDA

Method: the same architecture is written in PyTorch below, built from the
minidl model's own module tree, and gets minidl's initial weights through the
state dict. Both train on the same batch with SGD (lr 0.01, momentum 0.9) and
cross-entropy, with torch.set_num_threads equal to minidl's thread count.
After a warm-up (which also compiles or loads Numba's kernels), timed windows
alternate minidl, torch, minidl, torch, ... and each side's median window is
reported, with the ratio minidl/torch (above 1: minidl is faster). Inference is
warm, repeated passes over batches of 1,000 in eval mode without gradients.
Peak resident memory is measured in a fresh process per framework (a few
hundred training steps at batch 64), since one process cannot separate them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402
from minidl import nn as mnn  # noqa: E402
from minidl import optim as moptim  # noqa: E402
from minidl.models import CNNAttention, num_parameters  # noqa: E402
from minidl.nn import functional as MF  # noqa: E402


# ------------------------------------------------------------ torch twin

def torch_twin(model, torch):
    """A torch module with the same structure, names and weights as ``model``."""
    tnn, TF = torch.nn, torch.nn.functional

    class ChannelAttentionTwin(tnn.Module):
        def __init__(self, src):
            super().__init__()
            for name, child in src.named_children():
                setattr(self, name, convert(child))
            self.fusion = src.fusion

        def forward(self, maps):
            b, c = maps.shape[:2]
            weights = TF.softmax(self.score(self.mlp(maps.reshape(b, -1))), dim=1)
            if self.fusion == "sum":
                return (maps * weights[:, :, None, None]).sum(1), weights
            return maps * (weights * c)[:, :, None, None], weights

    class CNNAttentionTwin(tnn.Module):
        def __init__(self, src):
            super().__init__()
            for name, child in src.named_children():
                setattr(self, name, convert(child))

        def forward(self, x):
            fused, _ = self.attention(self.features(x))
            return self.classifier(fused)

    def convert(m):
        kind = type(m).__name__
        if kind == "Sequential":
            return tnn.Sequential(*[convert(c) for c in m.children()])
        if kind == "Conv2d":
            return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                              padding=m.padding, dilation=m.dilation, groups=m.groups,
                              bias=m.bias is not None)
        if kind == "Linear":
            return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if kind == "MaxPool2d":
            return tnn.MaxPool2d(m.kernel_size, m.stride)
        if kind == "ReLU":
            return tnn.ReLU()
        if kind == "Dropout":
            return tnn.Dropout(m.p)
        if kind == "Flatten":
            return tnn.Flatten()
        if kind == "ChannelAttention":
            return ChannelAttentionTwin(m)
        if kind == "CNNAttention":
            return CNNAttentionTwin(m)
        raise TypeError(f"bench_train: no torch twin for {kind}")

    twin = convert(model)
    state = {k: torch.from_numpy(np.array(v.numpy() if hasattr(v, "numpy") else v))
             for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin


# -------------------------------------------------------------- runners

class MinidlRunner:
    name = "minidl"

    def __init__(self, arch, device, seed=0):
        minidl.manual_seed(seed)
        self.device = device
        self.model = CNNAttention(arch).to(device)
        self.opt = moptim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def set_batch(self, x, y):
        self.x = minidl.Tensor(x, device=self.device)
        self.y = minidl.Tensor(y, device=self.device)

    def train_steps(self, n):
        model, opt, x, y = self.model, self.opt, self.x, self.y
        model.train()
        for _ in range(n):
            loss = MF.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.item())

    def infer(self, x, passes):
        self.model.eval()
        xt = minidl.Tensor(x, device=self.device)
        with minidl.no_grad():
            for _ in range(passes):
                out = self.model(xt)
        out.numpy()  # wait for the device


class TorchRunner:
    name = "torch"

    def __init__(self, minidl_model, device, torch):
        self.torch = torch
        self.device = torch.device(device)
        self.model = torch_twin(minidl_model, torch).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def set_batch(self, x, y):
        self.x = self.torch.from_numpy(x).to(self.device)
        self.y = self.torch.from_numpy(y).to(self.device)

    def train_steps(self, n):
        F = self.torch.nn.functional
        model, opt, x, y = self.model, self.opt, self.x, self.y
        model.train()
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.item())

    def infer(self, x, passes):
        self.model.eval()
        xt = self.torch.from_numpy(x).to(self.device)
        with self.torch.no_grad():
            for _ in range(passes):
                out = self.model(xt)
        out.cpu()


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_arch(arch, batch_sizes, device, windows, steps, torch):
    rng = np.random.default_rng(0)
    mini = MinidlRunner(arch, device)
    runners = [mini]
    if torch is not None:
        runners.append(TorchRunner(mini.model, device, torch))
    result = {"arch": arch, "parameters": num_parameters(mini.model), "train": {},
              "inference": {}}
    start = time.perf_counter()
    mini.set_batch(rng.random((2, 1, 28, 28), dtype=np.float32), np.array([1, 2]))
    mini.train_steps(1)
    result["first_step_seconds"] = round(time.perf_counter() - start, 3)
    for batch in batch_sizes:
        x = rng.random((batch, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, size=batch).astype(np.int64)
        for r in runners:
            r.set_batch(x, y)
            r.train_steps(max(3, steps // 4))            # warm-up
        times = {r.name: [] for r in runners}
        for _ in range(windows):                          # A B A B ...
            for r in runners:
                times[r.name].append(_timed(r.train_steps, steps))
        entry = {name: round(batch * steps / statistics.median(t), 1)
                 for name, t in times.items()}
        if "torch" in entry:
            entry["ratio"] = round(entry["minidl"] / entry["torch"], 3)
        result["train"][str(batch)] = entry
    x = rng.random((1000, 1, 28, 28), dtype=np.float32)
    for r in runners:
        r.infer(x, 1)
    times = {r.name: [] for r in runners}
    passes = 3
    for _ in range(windows):
        for r in runners:
            times[r.name].append(_timed(r.infer, x, passes))
    entry = {name: round(1000 * passes / statistics.median(t), 1) for name, t in times.items()}
    if "torch" in entry:
        entry["ratio"] = round(entry["minidl"] / entry["torch"], 3)
    result["inference"]["1000"] = entry
    return result


# --------------------------------------------------------------- memory

def memory_probe(framework, arch, steps):
    """Run in a child process: train ``steps`` steps at batch 64, print peak RSS (MiB)."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=64).astype(np.int64)
    mini = MinidlRunner(arch, "cpu")
    if framework == "torch":
        import torch
        torch.set_num_threads(minidl.get_num_threads())
        runner = TorchRunner(mini.model, "cpu", torch)
        del mini
    else:
        runner = mini
    runner.set_batch(x, y)
    runner.train_steps(steps)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mib": round(peak_kib / 1024, 1)}))


def measure_memory(arch, steps=200):
    out = {}
    for framework in ("minidl", "torch"):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe",
                               framework, "--arch", arch, "--steps", str(steps)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            out[framework] = None
            continue
        out[framework] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    return out


# ----------------------------------------------------------------- main

def environment(torch):
    info = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
            "threads": minidl.get_num_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "minidl": minidl.__version__,
            "numba": minidl.backend.numba_enabled()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def print_table(results):
    print(f"\n{'arch':8} {'what':16} {'minidl img/s':>13} {'torch img/s':>12} {'ratio':>7}")
    for r in results["archs"]:
        for batch, e in r["train"].items():
            print(f"{r['arch']:8} {'train b=' + batch:16} {e['minidl']:>13,.0f} "
                  f"{e.get('torch', float('nan')):>12,.0f} {e.get('ratio', float('nan')):>7.2f}")
        e = r["inference"]["1000"]
        print(f"{r['arch']:8} {'infer b=1000':16} {e['minidl']:>13,.0f} "
              f"{e.get('torch', float('nan')):>12,.0f} {e.get('ratio', float('nan')):>7.2f}")
        if r.get("peak_rss_mib"):
            m = r["peak_rss_mib"]
            print(f"{r['arch']:8} {'peak RSS MiB':16} {m['minidl'] or 0:>13,.0f} "
                  f"{m['torch'] or 0:>12,.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=["seed", "default", "both"], default="both")
    p.add_argument("--batch-sizes", default="32,64,256")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--windows", type=int, default=5, help="timed windows per framework")
    p.add_argument("--steps", type=int, default=30, help="training steps per window")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--no-torch", action="store_true", help="minidl alone")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--memory-probe", choices=["minidl", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.arch, args.steps)

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: measuring minidl alone", file=sys.stderr)
        else:
            torch.set_num_threads(minidl.get_num_threads())
    archs = ["seed", "default"] if args.arch == "both" else [args.arch]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results = {"benchmark": "train", "device": args.device, "environment": environment(torch),
               "command": "python benchmarks/bench_train.py " + " ".join(argv or sys.argv[1:]),
               "archs": []}
    for arch in archs:
        r = bench_arch(arch, batches, args.device, args.windows, args.steps, torch)
        if not args.no_memory and args.device == "cpu" and torch is not None:
            r["peak_rss_mib"] = measure_memory(arch)
        results["archs"].append(r)
    print_table(results)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.json)
    return results


if __name__ == "__main__":
    main()
