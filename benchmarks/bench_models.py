"""CNNs as users write them, minidl against PyTorch (and onnxruntime for inference).

    python benchmarks/bench_models.py                        # every model, batches 64/256
    python benchmarks/bench_models.py --models mnist,lenet --batch-sizes 64 --json out.json
    python benchmarks/bench_models.py --no-fusion            # minidl's ops as called
    python benchmarks/bench_models.py --device cuda          # CuPy against PyTorch CUDA
    python benchmarks/bench_models.py --tiny                 # a smoke run (the tests')

The models are not minidl's zoo: each is written once below, in plain PyTorch
style, as a function of the framework's ``nn`` and ``F`` (the same source text
builds the minidl model and its PyTorch twin):

* ``article``: the CNN+Attention of the article from public layers
  (``nn.Sequential`` of conv -> ReLU -> pool twice, an attention MLP, softmax
  over channels, a linear classifier), 1x28x28;
* ``mnist``: the pytorch/examples MNIST net (functional: conv 1->32->64 3x3
  without padding, ReLU, max-pool, dropout, fc 9216->128->10, log_softmax +
  nll_loss), 1x28x28;
* ``lenet``: the CIFAR-10 tutorial's LeNet (5x5 convs, ReLU then pool, fc
  400->120->84->10), 3x32x32;
* ``vgg``: a small VGG-style net with BatchNorm ((conv-bn-ReLU) x2, pool,
  twice, 32 then 64 channels, a linear classifier), 3x32x32.

Method as ``bench_train.py``: minidl builds each model and saves its initial
weights; the PyTorch twin loads them. Both train on the same batch with SGD
(lr 0.01, momentum 0.9) on the same number of threads; each framework runs in
a worker process of its own; timed windows alternate minidl, PyTorch, ...
(after a pause and a few untimed steps) and the median window of each is
reported, with the ratio minidl / PyTorch (above 1: minidl is faster).
Inference: eval mode, no gradients, batches of 1,000; onnxruntime runs the
PyTorch twin exported with ``torch.onnx.export``, on the same threads
(``intra_op_num_threads``), in a third process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

from caller_env import CALLER_ENV, restore_thread_settings, torch_worker_env  # before minidl
from worker_process import WorkerProcess

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402  (before NumPy: it sets BLAS thread settings NumPy reads)
import numpy as np  # noqa: E402
from minidl.fileio import atomic_write_bytes  # noqa: E402
import bench_train  # noqa: E402
from bench_train import _rates, _timed, environment  # noqa: E402


# ------------------------------------------------------------ the models
# Each takes the framework's nn and F and returns (model class, input shape,
# loss name). Written as a PyTorch user would: no minidl-specific calls.

def article(nn, F):
    class Article(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.mlp = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2),
                                     nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.2))
            self.score = nn.Linear(64, 16)
            self.classifier = nn.Linear(784, 10)

        def forward(self, x):
            maps = self.features(x)
            b, c = maps.shape[0], maps.shape[1]
            weights = F.softmax(self.score(self.mlp(maps.reshape(b, -1))), dim=1)
            fused = maps * (weights * c).reshape(b, c, 1, 1)
            return self.classifier(fused.reshape(b, -1))

    return Article, (1, 28, 28), "cross_entropy"


def mnist(nn, F):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = x.flatten(1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    return Net, (1, 28, 28), "nll_loss"


def lenet(nn, F):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = x.flatten(1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    return Net, (3, 32, 32), "cross_entropy"


def vgg(nn, F):
    def conv_bn_relu(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    class SmallVGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *conv_bn_relu(3, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
                *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2))
            self.classifier = nn.Linear(64 * 8 * 8, 10)

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    return SmallVGG, (3, 32, 32), "cross_entropy"


MODELS = {"article": article, "mnist": mnist, "lenet": lenet, "vgg": vgg}


def build(name, framework_nn, framework_F):
    cls, shape, loss = MODELS[name](framework_nn, framework_F)
    return cls(), shape, loss


# -------------------------------------------------------------- runners

class MinidlRunner(bench_train.MinidlRunner):
    """bench_train's runner (batches, steps, inference), for a model built here."""

    def __init__(self, device, threads):
        minidl.set_num_threads(threads)
        from minidl import nn, optim
        from minidl.nn import functional as F
        self.nn, self.F, self.optim, self.device = nn, F, optim, device

    def load(self, name, init_path):
        self.model, self.shape, loss = build(name, self.nn, self.F)
        self.model.load_state_dict(minidl.load(init_path))
        self.model.to(self.device)
        self.loss = getattr(self.F, loss)
        self.opt = self.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)


class TorchRunner(bench_train.TorchRunner):
    """bench_train's runner (batches, steps, inference), for a model built here."""

    def __init__(self, device, threads):
        restore_thread_settings()   # PyTorch as its users run it (see caller_env)
        import torch
        torch.set_num_threads(threads)
        self.torch, self.device = torch, torch.device(device)

    def load(self, name, init_path):
        torch = self.torch
        self.model, self.shape, loss = build(name, torch.nn, torch.nn.functional)
        state = {k: torch.from_numpy(np.array(v.numpy())) for k, v in minidl.load(init_path).items()}
        self.model.load_state_dict(state, strict=True)
        self.model.to(self.device)
        self.loss = getattr(torch.nn.functional, loss)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def export(self, path):
        """The eval-mode twin as ONNX (a dynamic batch axis), for onnxruntime."""
        self.model.eval()
        with warnings.catch_warnings():   # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            self.torch.onnx.export(self.model, (self.torch.zeros(1, *self.shape),), path,
                                   input_names=["x"], output_names=["y"],
                                   dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                                   dynamo=False)


class OnnxRunner:
    def __init__(self, device, threads):
        import onnxruntime
        self.ort, self.threads = onnxruntime, threads
        self.providers = (["CUDAExecutionProvider"] if device == "cuda" else
                          ["CPUExecutionProvider"])

    def load(self, path):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        self.session = self.ort.InferenceSession(path, options, providers=self.providers)

    def infer(self, x, passes):
        for _ in range(passes):
            self.session.run(None, {"x": x})


RUNNERS = {"minidl": MinidlRunner, "torch": TorchRunner, "onnxruntime": OnnxRunner}


def batch_arrays(batch, shape):
    """The same batch in every process: images in [0, 1] and labels."""
    rng = np.random.default_rng(batch)
    x = rng.random((batch, *shape), dtype=np.float32)
    return x, rng.integers(0, 10, size=batch).astype(np.int64)


def worker(framework, device, threads):
    """A child process answering JSON commands on stdin (see ``Worker``)."""
    runner = RUNNERS[framework](device, threads)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        reply = {}
        if cmd["cmd"] == "load":
            runner.load(*cmd["args"])
            if framework != "onnxruntime":
                runner.set_batch(*batch_arrays(2, runner.shape))
                runner.train_steps(1)           # Numba's kernels compiled or loaded; torch's init
        elif cmd["cmd"] == "export":
            runner.export(cmd["path"])
        elif cmd["cmd"] == "batch":
            runner.set_batch(*batch_arrays(cmd["batch"], cmd["shape"]))
        elif cmd["cmd"] == "train":
            if cmd.get("warmup"):   # untimed: back from the pause
                runner.train_steps(cmd["warmup"])
            reply = {"seconds": _timed(runner.train_steps, cmd["steps"])}
        else:   # "infer"
            x = batch_arrays(cmd["batch"], cmd["shape"])[0]
            if cmd.get("warmup"):
                runner.infer(x, cmd["warmup"])
            reply = {"seconds": _timed(runner.infer, x, cmd["passes"])}
        print(json.dumps(reply), flush=True)


class Worker(WorkerProcess):
    """The parent's handle on one worker process (one per framework, for every model)."""

    def __init__(self, framework, device, threads, fusion=True):
        if framework == "minidl":
            env = dict(CALLER_ENV)
            if not fusion:
                env["MINIDL_FUSION"] = "0"
        else:
            # PyTorch and onnxruntime as their users run them: the worker imports minidl
            # only to read the initial weights (see caller_env and bench_train's Worker)
            env = torch_worker_env()
            env["MINIDL_MALLOC_TUNING"] = "0"
        super().__init__(framework, [sys.executable, os.path.abspath(__file__), "--worker",
                                     framework, "--device", device, "--threads", str(threads)],
                         env)
        self.read()

    def ask(self, **cmd):
        return self.request(json.dumps(cmd))


def _has(module):
    return subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__version__)"],
                          capture_output=True, text=True)


def bench_model(name, workers, ort, batch_sizes, infer_batch, windows, steps, tmp):
    import minidl.nn as mnn
    from minidl.nn import functional as MF
    minidl.manual_seed(0)
    model, shape, _ = build(name, mnn, MF)
    init_path = os.path.join(tmp, f"{name}.safetensors")
    minidl.save(model.state_dict(), init_path)        # the same initial weights for all
    for w in workers:
        w.ask(cmd="load", args=[name, init_path])
    result = {"model": name, "input": list(shape),
              "parameters": sum(p.numel() for p in model.parameters()),
              "train": {}, "inference": {}}
    for batch in batch_sizes:
        for w in workers:
            w.ask(cmd="batch", batch=batch, shape=shape)
            w.ask(cmd="train", steps=max(2, steps // 3))      # warm-up
        result["train"][str(batch)] = _rates(workers, batch * steps, windows, cmd="train",
                                             steps=steps, warmup=max(1, steps // 10))
    infer_workers = list(workers)
    if ort is not None:
        onnx_path = os.path.join(tmp, f"{name}.onnx")
        next(w for w in workers if w.name == "torch").ask(cmd="export", path=onnx_path)
        ort.ask(cmd="load", args=[onnx_path])
        infer_workers.append(ort)
    passes = 2
    for w in infer_workers:
        w.ask(cmd="infer", passes=1, batch=infer_batch, shape=shape)
    entry = _rates(infer_workers, infer_batch * passes, windows, cmd="infer", passes=passes,
                   warmup=1, batch=infer_batch, shape=shape)
    if "onnxruntime" in entry:
        entry["ratio_onnxruntime"] = round(entry["minidl"] / entry["onnxruntime"], 3)
    result["inference"][str(infer_batch)] = entry
    return result


def print_table(results):
    print(f"\n{'model':8} {'what':16} {'minidl img/s':>13} {'torch img/s':>12} {'ratio':>7} "
          f"{'ort img/s':>10} {'vs ort':>7}")
    nan = float("nan")
    for r in results["models"]:
        rows = [(f"train b={b}", e) for b, e in r["train"].items()]
        rows += [(f"infer b={b}", e) for b, e in r["inference"].items()]
        for what, e in rows:
            print(f"{r['model']:8} {what:16} {e['minidl']:>13,.0f} {e.get('torch', nan):>12,.0f} "
                  f"{e.get('ratio', nan):>7.2f} {e.get('onnxruntime', nan):>10,.0f} "
                  f"{e.get('ratio_onnxruntime', nan):>7.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--infer-batch", type=int, default=1000)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every framework (default: minidl's, i.e. the cores)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per framework")
    p.add_argument("--steps", type=int, default=20, help="training steps per window")
    p.add_argument("--no-fusion", action="store_true",
                   help="minidl runs every op as called (MINIDL_FUSION=0)")
    p.add_argument("--no-torch", action="store_true", help="minidl alone")
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run: batch 4, inference batch 8, one window of one step")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--worker", choices=list(RUNNERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    threads = args.threads or minidl.get_num_threads()
    if args.worker:
        return worker(args.worker, args.device, threads)
    if args.tiny:
        args.batch_sizes, args.infer_batch, args.windows, args.steps = "4", 8, 1, 1
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"bench_models: unknown model(s) {unknown}; expected some of "
                         f"{sorted(MODELS)}")
    env = environment(threads)
    with_torch = not args.no_torch
    if with_torch:
        probe = _has("torch")
        if probe.returncode:
            print("torch is not installed: measuring minidl alone", file=sys.stderr)
            with_torch = False
        else:
            env["torch"] = probe.stdout.strip()
    probe = _has("onnxruntime") if with_torch else None
    with_ort = probe is not None and not probe.returncode
    if with_ort:
        env["onnxruntime"] = probe.stdout.strip()
    env["fusion"] = not args.no_fusion
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results = {"benchmark": "models", "device": args.device, "environment": env,
               "command": "python benchmarks/bench_models.py " + " ".join(
                   argv if argv is not None else sys.argv[1:]), "models": []}
    workers, ort = [], None
    try:
        workers.append(Worker("minidl", args.device, threads, fusion=not args.no_fusion))
        if with_torch:
            workers.append(Worker("torch", args.device, threads))
        if with_ort:
            ort = Worker("onnxruntime", args.device, threads)
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                start = time.perf_counter()
                results["models"].append(bench_model(name, workers, ort, batches,
                                                     args.infer_batch, args.windows, args.steps,
                                                     tmp))
                print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    finally:
        for w in workers + ([ort] if ort else []):
            w.close()
    print_table(results)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(results, indent=2).encode())
    return results


if __name__ == "__main__":
    main()
