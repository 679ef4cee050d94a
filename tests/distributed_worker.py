"""What each rank runs in tests/test_distributed.py (``mpiexec -n 2 python
tests/distributed_worker.py CASE OUT``); ``train`` is also imported by the test
itself, which runs it in one process as the reference.

Cases: ``checks`` (threads, random streams, then the training runs, each
rank writing its results to OUT/rank<r>.npz), ``gpu`` (one training on each
rank's GPU), ``example MODE`` (the example's trainer: ``straight``, ``stop``
after epoch 1, ``resume``), ``raise`` (rank 1 raises while rank 0 waits in a
collective), ``standin-nccl`` (the CuPy stand-in's NCCL refuses what NCCL
refuses; each rank writes the errors it saw to OUT/rank<r>.json).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402  (before NumPy, as every minidl program)
import numpy as np  # noqa: E402
from minidl import distributed, nn, optim  # noqa: E402
from minidl.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402
from minidl.nn import functional as F  # noqa: E402
from minidl.nn.parallel import DistributedDataParallel  # noqa: E402

SAMPLES = 52   # not a multiple of the global batch: the last batch is short


class Net(nn.Module):
    """Conv, pool, linear: small; ``skip_head`` leaves the second head unused."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Flatten())
        self.head = nn.Linear(4 * 4 * 4, 3)
        self.spare = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x, use_spare=True):
        h = self.features(x)
        return self.head(h) + self.spare(h) if use_spare else self.head(h)


def data():
    rng = np.random.default_rng(7)
    return (rng.standard_normal((SAMPLES, 1, 8, 8)).astype(np.float32),
            rng.integers(0, 3, SAMPLES))


def train(batch_size, epochs=2, accumulate=1, spare_on_rank0_only=False, device="cpu"):
    """Train Net with DDP under the current world; returns its final weights.

    ``batch_size`` is per rank; ``accumulate`` micro-batches go into each step
    (all but the last under ``no_sync``)."""
    minidl.manual_seed(3)
    model = DistributedDataParallel(Net().to(device))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = data()
    sampler = DistributedSampler(TensorDataset(x, y), seed=11)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, sampler=sampler,
                        device=device)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = list(loader)
        for step in range(0, len(batches), accumulate):
            opt.zero_grad()
            group = batches[step:step + accumulate]
            for i, (xb, yb) in enumerate(group):
                use_spare = not spare_on_rank0_only or distributed.rank() == 0
                if i < len(group) - 1:
                    with model.no_sync():
                        F.cross_entropy(model(xb, use_spare), yb).backward()
                else:
                    F.cross_entropy(model(xb, use_spare), yb).backward()
            opt.step()
    return {k: v.numpy().copy() for k, v in model.module.state_dict().items()}


def checks(out):
    rank = distributed.rank()
    report = {"threads": minidl.get_num_threads(),
              "numba_env": os.environ.get("NUMBA_NUM_THREADS"),
              "affinity": sorted(os.sched_getaffinity(0)),
              "world": distributed.world_size(), "local_rank": distributed.local_rank(),
              "main": distributed.is_main()}
    minidl.manual_seed(5)
    report["shared"] = minidl.random.default_generator().integers(1 << 30, size=4).tolist()
    report["per_rank"] = minidl.random.rank_generator().integers(1 << 30, size=4).tolist()
    minidl.manual_seed(5)   # reseeding restarts both streams
    report["shared_again"] = minidl.random.default_generator().integers(1 << 30, size=4).tolist()
    report["per_rank_again"] = minidl.random.rank_generator().integers(1 << 30, size=4).tolist()
    report["dropout"] = np.flatnonzero(
        F.dropout(minidl.ones(64), 0.5).numpy() == 0).tolist()
    report["init"] = nn.Linear(3, 2).weight.numpy().ravel().tolist()
    # collectives
    t = minidl.tensor([float(rank + 1), 10.0 * (rank + 1)])
    distributed.all_reduce(t)
    report["sum"] = t.numpy().tolist()
    t = minidl.tensor([float(rank + 1)])
    distributed.all_reduce(t, op=distributed.ReduceOp.AVG)
    report["avg"] = t.numpy().tolist()
    t = minidl.tensor([float(rank + 1)] * 3)
    distributed.broadcast(t, src=1)
    report["broadcast"] = t.numpy().tolist()
    strided = np.arange(12.0).reshape(3, 4)[:, ::2] * (rank + 1)   # not contiguous
    distributed.all_reduce(strided, op="max")
    report["max_strided"] = strided.tolist()
    objects = [{"rank": rank}] if rank == 0 else [None]
    report["object"] = distributed.broadcast_object_list(objects)[0]
    from minidl.train import Trainer
    try:   # a loader that gives every rank the whole dataset is refused
        Trainer(nn.Linear(2, 2), optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1),
                F.mse_loss, DataLoader(TensorDataset(np.zeros((4, 2), np.float32)), batch_size=2),
                epochs=1, out=os.path.join(out, "unsharded"))
    except ValueError as exc:
        report["unsharded"] = str(exc)
    distributed.barrier()
    results = {"equal": train(batch_size=4), "accumulate": train(batch_size=2, accumulate=2),
               "unused": train(batch_size=4, epochs=1, spare_on_rank0_only=True)}
    np.savez(os.path.join(out, f"rank{rank}.npz"),
             **{f"{case}/{k}": v for case, weights in results.items()
                for k, v in weights.items()})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def gpu(out):
    """The ``equal`` training on this rank's GPU (NCCL reduces the gradients).
    init() first: it selects this rank's GPU, where the model must be made."""
    distributed.init()
    weights = train(batch_size=4, device="cuda")
    np.savez(os.path.join(out, f"rank{distributed.rank()}.npz"), **weights)


class _Stop(Exception):
    pass


def example(out):
    """The example's trainer (seed arch, dropout and shifts on) in OUT/straight
    or OUT/broken, on
    MNIST prepared in OUT/data; ``stop`` ends every rank after epoch 1 (its
    checkpoint written), ``resume`` continues from there. Rank 1 records every
    file it opens for writing under the run's folder into OUT/rank1-writes-MODE.json."""
    mode = sys.argv[3]
    run = os.path.join(out, mode if mode == "straight" else "broken")
    writes = []
    if distributed.rank() == 1:
        def audit(event, args):
            if event == "open" and str(args[0]).startswith(run) and \
                    args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                writes.append(str(args[0]))
        sys.addaudithook(audit)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "examples"))
    import mnist_cnn_attn as recipe
    config = recipe.TrainConfig(arch="seed", epochs=2, batch_size=32, out=run, progress=False,
                                resume=mode == "resume")
    data = recipe.load_mnist(os.path.join(out, "data"), 256, 64, download=False)
    trainer = recipe.make_trainer(config, data, log=lambda line: None)
    if mode == "stop":
        def stop(epoch):
            if epoch == 1:
                raise _Stop
        trainer.on_epoch_start = stop
    try:
        trainer.fit()
    except _Stop:
        pass
    if distributed.rank() == 1:
        with open(os.path.join(out, f"rank1-writes-{mode}.json"), "w") as f:
            json.dump(writes, f)


def fail(out):
    distributed.init()
    if distributed.rank() == 1:
        raise ValueError("rank 1 fails on purpose")
    distributed.barrier()   # rank 0 would wait here for ever without the abort
    open(os.path.join(out, "rank0-went-on"), "w").close()


def standin_nccl(out):
    """Mistakes NCCL punishes by a hang or a crash, each made on both ranks
    (an error on one rank only would leave the other in the collective)."""
    import cupy
    from cupy.cuda import nccl
    distributed.init()
    r, seen = distributed.rank(), {}
    uid = distributed._comm.bcast(nccl.get_unique_id() if r == 0 else None, root=0)

    def attempt(name, make):
        try:
            make()
        except Exception as exc:   # noqa: BLE001 (recorded, the test reads it)
            seen[name] = f"{type(exc).__name__}: {exc}"

    with cupy.cuda.Device(0):   # both ranks on GPU 0
        attempt("one_gpu", lambda: nccl.NcclCommunicator(2, uid, r))
    attempt("other_ids", lambda: nccl.NcclCommunicator(2, nccl.get_unique_id(), r))
    comm = nccl.NcclCommunicator(2, uid, r)
    a = cupy.arange(4, dtype=cupy.float32) * (r + 1)
    stream = cupy.cuda.get_current_stream().ptr
    attempt("counts", lambda: comm.allReduce(a.data.ptr, a.data.ptr, 3 + r, nccl.NCCL_FLOAT32,
                                             nccl.NCCL_SUM, stream))
    comm.allReduce(a.data.ptr, a.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream)
    seen["sum"] = a.get().tolist()
    b = cupy.arange(4, dtype=cupy.int64) + 10 * r
    comm.bcast(b[2:].data.ptr, 2, nccl.NCCL_INT64, 1, stream)   # a view's pointer
    seen["bcast"] = b.get().tolist()
    with cupy.cuda.Device(1 - r):
        elsewhere = cupy.ones(3, dtype=cupy.float32)
    attempt("other_gpu", lambda: distributed.all_reduce(elsewhere))
    with open(os.path.join(out, f"rank{r}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    case, out = sys.argv[1:3]
    {"checks": checks, "raise": fail, "gpu": gpu, "example": example,
     "standin-nccl": standin_nccl}[case](out)
