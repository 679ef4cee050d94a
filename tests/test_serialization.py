"""minidl.save / minidl.load: safetensors, atomic, nested state, torch interop, bad files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minidl
from minidl import backend, nn, optim
from minidl.nn import functional as F
from minidl.random import get_rng_state, set_rng_state
from minidl.serialization import CheckpointError, load, save
from minidl.testing import assert_close


@pytest.fixture(autouse=True)
def _numpy_kernels():
    """Conv kernels are tested per backend in test_conv.py; plain NumPy keeps this fast."""
    with backend.use_numba(False):
        yield


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


def test_model_roundtrip_gives_identical_outputs(tmp_path):
    minidl.manual_seed(0)
    a = small_cnn()
    path = tmp_path / "model.safetensors"
    save(a.state_dict(), path)
    minidl.manual_seed(1)
    b = small_cnn()
    x = minidl.randn(3, 1, 8, 8)
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    state = load(path)
    assert list(state) == list(a.state_dict())
    b.load_state_dict(state)
    assert_close(b(x), a(x).numpy(), rtol=0, atol=0)
    assert not [f for f in os.listdir(tmp_path) if f != "model.safetensors"]   # no temp left


def test_checkpoint_loads_in_torch_with_same_logits(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    minidl.manual_seed(0)
    m = small_cnn()
    save(m.state_dict(), tmp_path / "m.safetensors")
    tn = torch.nn
    t = tn.Sequential(tn.Conv2d(1, 4, 3, padding=1), tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(),
                      tn.Linear(64, 10))
    t.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    assert_close(m(minidl.tensor(x)), t(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_training_resumes_exactly(tmp_path):
    x = minidl.randn(8, 1, 8, 8)
    y = np.arange(8) % 10

    def setup():
        minidl.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 10))
        opt = optim.Adam(model.parameters(), lr=0.01)
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
        return model, opt, sched

    def run(model, opt, sched, steps):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()   # dropout draws from minidl's RNG
            opt.step()
            sched.step()

    model, opt, sched = setup()
    run(model, opt, sched, 6)
    expected = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    model, opt, sched = setup()
    run(model, opt, sched, 3)
    path = tmp_path / "ckpt.safetensors"
    save({"model": model.state_dict(), "optimizer": opt.state_dict(),
          "scheduler": sched.state_dict(), "epoch": 3, "rng": get_rng_state(),
          "history": [{"loss": 1.5, "acc": None}], "shape": (1, 2)}, path)
    minidl.manual_seed(123)                         # anything in between
    model, opt, sched = setup()
    state = load(path)
    assert state["epoch"] == 3 and state["history"] == [{"loss": 1.5, "acc": None}]
    assert state["shape"] == (1, 2)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    run(model, opt, sched, 3)
    for k, v in model.state_dict().items():
        assert_close(v, expected[k], rtol=0, atol=0, msg=f"{k}: ")


def test_bad_files_give_clear_errors_and_leave_model_untouched(tmp_path):
    minidl.manual_seed(0)
    m = small_cnn()
    good = tmp_path / "good.safetensors"
    save(m.state_dict(), good)
    blob = good.read_bytes()
    before = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    cases = {"truncated.safetensors": blob[: len(blob) // 2], "empty.safetensors": b"",
             "pickle.pt": b"\x80\x04\x95" + b"\x00" * 64, "text.safetensors": b"hello world!"}
    # damaged header entries (a raw IndexError/TypeError before)
    for i, entry in enumerate([{"dtype": "F32", "shape": [1], "data_offsets": [4]},
                               {"dtype": "F32", "shape": [1], "data_offsets": 4},
                               {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]},
                               {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
                               {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}, [0, 4]]):
        header = json.dumps({"w": entry}).encode()
        cases[f"header{i}.safetensors"] = len(header).to_bytes(8, "little") + header + bytes(4)
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
            m.load_state_dict(load(path))
    for k, v in m.state_dict().items():
        assert_close(v, before[k], rtol=0, atol=0)
    with pytest.raises(TypeError, match="cannot store a object"):
        save({"x": object()}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_foreign_safetensors_loads_as_flat_dict(tmp_path):
    from safetensors.numpy import save_file
    save_file({"a": np.arange(3, dtype=np.float32)}, str(tmp_path / "f.safetensors"))
    state = load(tmp_path / "f.safetensors")
    assert list(state) == ["a"] and state["a"].dtype == np.float32


def test_scalar_buffers_and_batchnorm_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    m(minidl.randn(4, 1, 5, 5))                     # moves the running statistics
    save({"model": m.state_dict(), "scalar": minidl.tensor(2.5)}, tmp_path / "a.safetensors")
    state = load(tmp_path / "a.safetensors")
    assert state["model"]["1.num_batches_tracked"].shape == () and state["scalar"].item() == 2.5
    fresh = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    fresh.load_state_dict(state["model"])
    assert int(fresh[1].num_batches_tracked.item()) == 1
    save(m.state_dict(), tmp_path / "b.safetensors")
    t = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3)).eval()
    t.load_state_dict(load_file(str(tmp_path / "b.safetensors")))
    x = np.random.default_rng(0).standard_normal((2, 1, 5, 5)).astype(np.float32)
    assert_close(m.eval()(minidl.tensor(x)), t(torch.tensor(x)).detach().numpy(), rtol=1e-5,
                 atol=1e-5)


def _bf16_file(tmp_path, dtype="BF16"):
    # a well-formed file as safetensors.torch writes it; by hand, so torch is not needed
    header = json.dumps({"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / f"{dtype}.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x80\x3f\x80\x3f")
    return path


def test_unsupported_dtype_names_the_tensor_and_dtype(tmp_path, monkeypatch):
    # Regression: a well-formed BF16 file was reported as truncated or corrupt.
    # Without ml_dtypes BF16 is refused by name; F8 always is.
    monkeypatch.setattr("minidl.precision.bfloat16", None)
    for dtype in ("BF16", "F8_E4M3"):
        path = _bf16_file(tmp_path, dtype)
        with pytest.raises(CheckpointError, match=rf"tensor 'w' has dtype {dtype}.*F32") as err:
            load(path)
        assert "corrupt" not in str(err.value) and str(path) in str(err.value)


def test_bf16_files_load_with_ml_dtypes_and_round_trip(tmp_path):
    pytest.importorskip("ml_dtypes")
    w = load(_bf16_file(tmp_path))["w"]
    assert w.dtype == minidl.bfloat16 and w.float().tolist() == [1.0, 1.0]
    x = minidl.tensor([1.5, -2.25, 3.0]).bfloat16()
    save({"x": x, "y": minidl.ones(2)}, tmp_path / "mixed.safetensors")
    back = load(tmp_path / "mixed.safetensors")
    assert back["x"].dtype == minidl.bfloat16 and back["x"].float().tolist() == [1.5, -2.25, 3.0]
    assert back["y"].dtype == np.float32


def test_rng_state_carries_the_gpu_generator(monkeypatch):
    # Regression: only the CPU generator was checkpointed, so a resumed GPU run
    # drew epoch 1's dropout masks again. CuPy stands in as NumPy's generator API.
    import types

    from minidl import random as R
    fake_cupy = types.SimpleNamespace(random=types.SimpleNamespace(
        default_rng=np.random.default_rng))
    minidl.manual_seed(0)
    R.generator_for(fake_cupy).random(5)                 # epoch 1
    state = get_rng_state()
    uninterrupted = R.generator_for(fake_cupy).random(3)
    minidl.manual_seed(7)                                  # a fresh process, reseeded
    set_rng_state(json.loads(json.dumps(state)))           # as a checkpoint stores it
    np.testing.assert_array_equal(R.generator_for(fake_cupy).random(3), uninterrupted)
    minidl.manual_seed(0)


def test_load_takes_torchs_map_location_and_weights_only(tmp_path):
    # torch.load(path, map_location="cpu", weights_only=True), as tutorials write it
    path = tmp_path / "m.safetensors"
    save({"w": minidl.ones(2), "nested": [minidl.zeros(1), 3]}, path)
    state = load(path, map_location="cpu", weights_only=True)
    assert state["w"].device == "cpu" and state["nested"][1] == 3
    with pytest.raises(ValueError, match="unknown device"):
        load(path, map_location="tpu")
    assert load(path, map_location=lambda storage, loc: storage)["w"].numpy().tolist() == [1, 1]
    assert load(path, map_location={"cuda:0": "cpu"})["w"].device == "cpu"
    assert load(path, map_location=minidl.device("cpu"))["nested"][0].shape == (1,)
