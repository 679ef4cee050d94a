"""Training and inference throughput of CNN+Attention: minidl against PyTorch CPU/CUDA.

    python benchmarks/bench_train.py                     # both archs, batches 32/64/256
    python benchmarks/bench_train.py --arch seed --batch-sizes 64 --json out.json
    python benchmarks/bench_train.py --device cuda       # CuPy against PyTorch CUDA

Method: the same architecture is written in PyTorch below, built from the
minidl model's own module tree, and gets minidl's initial weights through the
state dict. Both train on the same batch with SGD (lr 0.01, momentum 0.9) and
cross-entropy, with torch.set_num_threads equal to minidl's thread count.
After a warm-up (which also compiles or loads Numba's kernels), timed windows
alternate minidl, torch, minidl, torch, ... (each after a short pause and a
few untimed steps, see ``_rates``) and each side's median window is
reported, with the ratio minidl/torch (above 1: minidl is faster). Inference is
warm, repeated passes over batches of 1,000 in eval mode without gradients.
Each framework runs in a worker process of its own, driven by this one (torch
imported beside Numba's threads slows them, and one process could not tell the
two peaks of resident memory apart); peak memory is read after the training
windows, before inference.
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
import tempfile
import time

from caller_env import CALLER_ENV, restore_thread_settings, torch_worker_env  # before minidl
from worker_process import WorkerProcess

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402  (before NumPy: it sets BLAS thread settings NumPy reads)
import numpy as np  # noqa: E402
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

class TrainSteps:
    """What every runner shares: SGD steps on ``self.loss`` of the model's output."""

    def train_steps(self, n):
        model, opt, x, y = self.model, self.opt, self.x, self.y
        model.train()
        for _ in range(n):
            loss = self.loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.item())


class MinidlRunner(TrainSteps):
    name = "minidl"

    def __init__(self, arch, device, init_path, threads):
        minidl.set_num_threads(threads)
        self.device = device
        self.model = CNNAttention(arch)
        self.model.load_state_dict(minidl.load(init_path))
        self.model.to(device)
        self.opt = moptim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss = MF.cross_entropy

    def set_batch(self, x, y):
        self.x = minidl.Tensor(x, device=self.device)
        self.y = minidl.Tensor(y, device=self.device)

    def infer(self, x, passes):
        self.model.eval()
        xt = minidl.Tensor(x, device=self.device)
        with minidl.no_grad():
            for _ in range(passes):
                out = self.model(xt)
        out.numpy()  # wait for the device


class TorchRunner(TrainSteps):
    name = "torch"

    def __init__(self, arch, device, init_path, threads):
        restore_thread_settings()   # PyTorch as its users run it (see caller_env)
        import torch
        torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        model = CNNAttention(arch)
        model.load_state_dict(minidl.load(init_path))
        self.model = torch_twin(model, torch).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss = torch.nn.functional.cross_entropy

    def set_batch(self, x, y):
        self.x = self.torch.from_numpy(x).to(self.device)
        self.y = self.torch.from_numpy(y).to(self.device)

    def infer(self, x, passes):
        self.model.eval()
        xt = self.torch.from_numpy(x).to(self.device)
        with self.torch.no_grad():
            for _ in range(passes):
                out = self.model(xt)
        out.cpu()


def batch_arrays(batch):
    """The same batch in every process: images in [0, 1] and labels."""
    rng = np.random.default_rng(batch)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    return x, rng.integers(0, 10, size=batch).astype(np.int64)


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def worker(framework, arch, device, init_path, threads):
    """A child process answering JSON commands on stdin with timings on stdout.

    Each framework runs in a process of its own: torch imported beside
    Numba's threads slows them 3-4x, and one process cannot report the peak
    memory of each.
    """
    start = time.perf_counter()
    runner = (MinidlRunner if framework == "minidl" else TorchRunner)(arch, device, init_path,
                                                                      threads)
    runner.set_batch(*batch_arrays(2))
    runner.train_steps(1)               # loads (or compiles) Numba's kernels; torch's init
    print(json.dumps({"first_step_seconds": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "batch":
            runner.set_batch(*batch_arrays(cmd["batch"]))
            reply = {}
        elif cmd["cmd"] == "train":
            if cmd.get("warmup"):   # untimed: back from the pause
                runner.train_steps(cmd["warmup"])
            reply = {"seconds": _timed(runner.train_steps, cmd["steps"])}
        elif cmd["cmd"] == "infer":
            x = batch_arrays(1000)[0]
            if cmd.get("warmup"):
                runner.infer(x, cmd["warmup"])
            reply = {"seconds": _timed(runner.infer, x, cmd["passes"])}
        else:  # "rss": peak resident memory so far, in MiB
            reply = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        print(json.dumps(reply), flush=True)


class Worker(WorkerProcess):
    """The parent's handle on one worker process."""

    def __init__(self, framework, arch, device, init_path, threads):
        if framework == "torch":
            # PyTorch as its users run it: the torch worker imports minidl only to
            # read the initial weights, so it must not get minidl's malloc tuning
            # nor its thread count (see caller_env and TorchRunner).
            env = torch_worker_env()
            env["MINIDL_MALLOC_TUNING"] = "0"
        else:
            env = dict(CALLER_ENV)
        super().__init__(framework, [sys.executable, os.path.abspath(__file__), "--worker",
                                     framework, "--arch", arch, "--device", device, "--init",
                                     init_path, "--threads", str(threads)], env)
        self.ready = self.read()

    def ask(self, **cmd):
        return self.request(json.dumps(cmd))


SETTLE_SECONDS = 0.25


def _rates(workers, images, windows, **cmd):
    """Alternate A B A B ... for ``windows`` rounds; images/s of each median window.

    Each window starts after a short pause: BLAS worker threads spin for a
    while after their last call, and on 2 cores the idle process's spinning
    threads would otherwise eat into the other's window. The worker then runs
    a few untimed steps (``warmup``) before the timed ones, so the window
    measures steady work, not the climb back from idle (cold caches, sleeping
    threads), which would weigh most on the faster framework's short steps."""
    times = {w.name: [] for w in workers}
    for _ in range(windows):
        for w in workers:
            time.sleep(SETTLE_SECONDS)
            times[w.name].append(w.ask(**cmd)["seconds"])
    entry = {name: round(images / statistics.median(t), 1) for name, t in times.items()}
    if "torch" in entry:
        entry["ratio"] = round(entry["minidl"] / entry["torch"], 3)
    return entry


def bench_arch(arch, batch_sizes, device, windows, steps, with_torch, threads):
    minidl.manual_seed(0)
    model = CNNAttention(arch)
    fd, init_path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    minidl.save(model.state_dict(), init_path)        # the same initial weights for both
    workers = []
    try:
        workers.append(Worker("minidl", arch, device, init_path, threads))
        if with_torch:
            workers.append(Worker("torch", arch, device, init_path, threads))
        result = {"arch": arch, "parameters": num_parameters(model), "train": {},
                  "inference": {}, "first_step_seconds": {
                      w.name: round(w.ready["first_step_seconds"], 3) for w in workers}}
        for batch in batch_sizes:
            for w in workers:
                w.ask(cmd="batch", batch=batch)
                w.ask(cmd="train", steps=max(3, steps // 3))      # warm-up
            result["train"][str(batch)] = _rates(workers, batch * steps, windows,
                                                 cmd="train", steps=steps,
                                                 warmup=max(2, steps // 10))
        if device == "cpu":
            result["peak_rss_mib"] = {w.name: round(w.ask(cmd="rss")["peak_rss_mib"], 1)
                                      for w in workers}
        passes = 3
        for w in workers:
            w.ask(cmd="infer", passes=1)
        result["inference"]["1000"] = _rates(workers, 1000 * passes, windows,
                                             cmd="infer", passes=passes, warmup=1)
    finally:
        for w in workers:
            w.close()
        os.unlink(init_path)
    return result


# ----------------------------------------------------------------- main

def gpu_environment():
    """The GPU, CuPy and CUDA versions (for --device cuda)."""
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {"gpu": name.decode() if isinstance(name, bytes) else str(name),
            "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}


def environment(threads, device="cpu"):
    info = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
            "threads": threads, "python": platform.python_version(),
            "numpy": np.__version__, "minidl": minidl.__version__,
            "numba": minidl.backend.numba_enabled(), "load_average": os.getloadavg()[0]}
    if device == "cuda":
        info.update(gpu_environment())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def print_table(results):
    print(f"\n{'arch':8} {'what':16} {'minidl img/s':>13} {'torch img/s':>12} {'ratio':>7}")
    for r in results["archs"]:
        rows = [(f"train b={b}", e) for b, e in r["train"].items()]
        rows.append(("infer b=1000", r["inference"]["1000"]))
        for what, e in rows:
            print(f"{r['arch']:8} {what:16} {e['minidl']:>13,.0f} "
                  f"{e.get('torch', float('nan')):>12,.0f} {e.get('ratio', float('nan')):>7.2f}")
        if r.get("peak_rss_mib"):
            m = r["peak_rss_mib"]
            print(f"{r['arch']:8} {'peak RSS MiB':16} {m['minidl']:>13,.0f} "
                  f"{m.get('torch', float('nan')):>12,.0f}")


def markdown_table(results):
    """The README's GPU table from a ``--device cuda`` run's results."""
    env = results["environment"]
    lines = [f"Measured {env['date']} on {env.get('gpu', env['cpu'])} (CuPy {env.get('cupy')}, "
             f"PyTorch {env.get('torch', 'absent')}), "
             f"`{results['command']}`.", "",
             "| model | measure | minidl | PyTorch | minidl / PyTorch |",
             "|---|---|---:|---:|---:|"]
    for r in results["archs"]:
        rows = [(f"training, batch {b} (img/s)", e) for b, e in r["train"].items()]
        rows.append(("inference, batch 1000 (img/s)", r["inference"]["1000"]))
        for what, e in rows:
            torch_rate = f"{e['torch']:,.0f}" if "torch" in e else "-"
            ratio = f"{e['ratio']:.2f}x" if "ratio" in e else "-"
            lines.append(f"| {r['arch']} | {what} | {e['minidl']:,.0f} | {torch_rate} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=["seed", "default", "both"], default="both")
    p.add_argument("--batch-sizes", default="32,64,256")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both frameworks (default: minidl's, i.e. the cores)")
    p.add_argument("--windows", type=int, default=7, help="timed windows per framework")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per window (default 30 on the CPU, 200 on the GPU, "
                        "whose steps take a few milliseconds)")
    p.add_argument("--no-torch", action="store_true", help="minidl alone")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--worker", choices=["minidl", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    threads = args.threads or minidl.get_num_threads()
    if args.steps is None:
        args.steps = 30 if args.device == "cpu" else 200
    if args.worker:
        return worker(args.worker, args.arch, args.device, args.init, threads)

    with_torch, torch_version = not args.no_torch, None
    if with_torch:
        check = "" if args.device == "cpu" else "assert torch.cuda.is_available(); "
        probe = subprocess.run([sys.executable, "-c", f"import torch; {check}"
                                "print(torch.__version__)"], capture_output=True, text=True)
        if probe.returncode:
            print(f"torch ({'with CUDA' if check else 'any build'}) is not installed: measuring "
                  "minidl alone", file=sys.stderr)
            with_torch = False
        else:
            torch_version = probe.stdout.strip()
    archs = ["seed", "default"] if args.arch == "both" else [args.arch]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    env = environment(threads, args.device)
    if torch_version:
        env["torch"] = torch_version
    results = {"benchmark": "train", "device": args.device, "environment": env,
               "command": "python benchmarks/bench_train.py " + " ".join(
                   argv if argv is not None else sys.argv[1:]),
               "archs": [bench_arch(arch, batches, args.device, args.windows, args.steps,
                                    with_torch, threads) for arch in archs]}
    print_table(results)
    if args.device == "cuda":
        print("\n" + markdown_table(results))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.json)
    return results


if __name__ == "__main__":
    main()
