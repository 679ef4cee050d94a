"""Faults a hostile user found (issue 20), each with its regression test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minidl
from minidl import nn, optim
from minidl.fileio import _host, clean_stale_parts
from minidl.serialization import CheckpointError


# ------------------------------------------------------------ stale .part files

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_save_killed_mid_write_leaves_a_part_that_the_next_save_removes(tmp_path):
    target = tmp_path / "model.safetensors"
    code = ("import sys, time; from minidl.fileio import temp_path; "
            "p = temp_path(sys.argv[1]); p.write_bytes(b'x' * 1000); print(p, flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd())
    part = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert os.path.exists(part)                     # what kill -9 left behind
    minidl.save({"w": minidl.ones(3)}, target)
    assert not os.path.exists(part)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_only_parts_no_live_writer_can_own_are_removed(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    host = _host()
    dead = tmp_path / f".ckpt.safetensors.{host}-{_dead_pid()}.0a0a0a0a.part"
    mine = tmp_path / f".ckpt.safetensors.{host}-{os.getpid()}.1b1b1b1b.part"
    alive = tmp_path / f".ckpt.safetensors.{host}-1.2c2c2c2c.part"          # init: alive
    foreign_new = tmp_path / ".ckpt.safetensors.otherhost-5.3d3d3d3d.part"
    foreign_old = tmp_path / ".ckpt.safetensors.4e4e4e4e.part"              # older minidl
    other_target = tmp_path / f".other.safetensors.{host}-{_dead_pid()}.5f5f5f5f.part"
    for p in (dead, mine, alive, foreign_new, foreign_old, other_target):
        p.write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(foreign_old, (day_ago, day_ago))
    removed = clean_stale_parts(target)
    assert sorted(removed) == sorted([dead, foreign_old])
    assert all(p.exists() for p in (mine, alive, foreign_new, other_target))


def test_save_under_a_file_names_the_file(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"{blocker} is a file, not a directory"):
        minidl.save({"w": minidl.ones(1)}, blocker / "a" / "m.safetensors")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        minidl.save({"w": minidl.ones(1)}, tmp_path)


# ------------------------------------------------------------ tampered checkpoint metadata

def _tampered(tmp_path, skeleton, tensors=None):
    from safetensors.numpy import save_file
    path = tmp_path / "bad.safetensors"
    text = skeleton if isinstance(skeleton, str) else json.dumps(skeleton)
    save_file(tensors or {"w": np.zeros(4, np.float32)}, str(path),
              metadata={"format": "pt", "minidl": text, "minidl_format": "minidl.checkpoint/1"})
    return path


@pytest.mark.parametrize("skeleton", [
    {"__dict__": ["not", "a", "dict"]},                            # was AttributeError
    {"__dict__": {"w": "a string entry"}},
    {"__dict__": {"w": {"__tensor__": "w", "shape": [3, 3]}}},     # was a bare reshape error
    {"__dict__": {"w": {"__tensor__": ["w"]}}},
    {"__items__": [[["unhashable"], {"__value__": 1}]]},
    {"__items__": [["one element"]]},
    "[1, 2",
    "{" * 100000 + "}" * 100000,                                    # was RecursionError (json)
    '{"__list__": [' * 5000 + '{"__value__": 1}' + "]}" * 5000,    # was RecursionError (decode)
])
def test_tampered_metadata_is_a_checkpoint_error_naming_the_file(tmp_path, skeleton):
    path = _tampered(tmp_path, skeleton)
    with pytest.raises(CheckpointError, match=str(path)):
        minidl.load(path)


# ------------------------------------------------------------ data directory

def test_an_unwritable_data_directory_keeps_the_sources_tried(tmp_path, monkeypatch):
    from minidl.data import DataError, download
    from test_data_mnist import tiny_class, tiny_files
    cls, _ = tiny_class(tiny_files(), mirrors=["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"])

    def read_only(dest):
        raise PermissionError(13, "Permission denied", str(dest))
    monkeypatch.setattr(download, "temp_path", read_only)
    with pytest.raises(DataError) as info:
        cls(tmp_path, download=True, progress=False)
    msg = str(info.value)
    assert "Tried, in order" in msg and "no standard file" in msg
    assert f"cannot write into {tmp_path / 'tiny'}: PermissionError" in msg
    assert "place the files by hand" in msg


# ------------------------------------------------------------ argument validation

@pytest.mark.parametrize("args, error, message", [
    ((0, 4, 3), ValueError, "in_channels must be >= 1, got 0"),
    ((1, -4, 3), ValueError, "out_channels must be >= 1, got -4"),
    ((1, 4, 2.5), TypeError, "kernel_size must be an int, got float 2.5"),
    ((1, 4, (3, 0)), ValueError, "kernel_size must be >= 1, got 0"),
    ((1, 4, 3, 0), ValueError, "stride must be >= 1"),
    ((1, 4, 3, 1, -1), ValueError, "padding must be >= 0"),
    ((2, 4, 3, 1, 0, 1, 0), ValueError, "groups must be >= 1"),
    (("1", 4, 3), TypeError, "in_channels must be an int, got str"),
])
def test_conv2d_arguments_are_checked_by_name(args, error, message):
    with pytest.raises(error, match="Conv2d: " + message.replace("(", r"\(").replace(")", r"\)")):
        nn.Conv2d(*args)


def test_linear_arguments_are_checked_by_name():
    with pytest.raises(TypeError, match="Linear: in_features must be an int, got float"):
        nn.Linear(2.5, 3)
    with pytest.raises(ValueError, match="Linear: out_features must be >= 0"):
        nn.Linear(2, -1)
    assert nn.Linear(np.int64(2), 3).in_features == 2


def test_sgd_refuses_nan_and_string_learning_rates():
    p = [nn.Parameter(minidl.ones(2))]
    with pytest.raises(ValueError, match="SGD: lr must be a finite number >= 0, got nan"):
        optim.SGD(p, lr=float("nan"))
    with pytest.raises(TypeError, match="SGD: lr must be a real number, got str '0.1'"):
        optim.SGD(p, lr="0.1")
    with pytest.raises(TypeError, match="SGD: momentum must be a real number"):
        optim.SGD(p, lr=0.1, momentum=None)


def test_float16_conv_is_a_clear_error():
    conv = nn.Conv2d(1, 2, 3).to(minidl.float16)
    with pytest.raises(TypeError, match=r"Conv2dFunction: does not support float16 .*\.float\(\)"):
        conv(minidl.zeros(1, 1, 5, 5, dtype=minidl.float16))
