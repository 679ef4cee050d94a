"""The benchmark scripts run (on a tiny setting); their timings are never asserted."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_train_runs_on_a_tiny_setting(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "train.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_train.py"),
                    "--arch", "seed", "--batch-sizes", "4", "--windows", "1", "--steps", "1",
                    "--json", str(out)], check=True, capture_output=True,
                   timeout=600)
    result = json.loads(out.read_text())
    entry = result["archs"][0]["train"]["4"]
    assert entry["minidl"] > 0 and entry["torch"] > 0 and entry["ratio"] > 0
    assert result["environment"]["threads"] >= 1


def test_bench_ops_runs_on_a_tiny_setting(tmp_path):
    out = tmp_path / "ops.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_ops.py"), "--quick",
                    "--json", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    names = [row["name"] for row in result["rows"]]
    assert names[:2] == ["conv 1->8 28x28", "pool 2x2 8@28x28"] and len(names) == 5
    for row in result["rows"]:
        assert row["numpy_ms"] > 0
        if result["torch"]:
            assert row["torch_ms"] > 0 and row["ratio"] > 0


def test_bench_ops_cnn_shapes_runs_on_a_tiny_setting(tmp_path):
    out = tmp_path / "cnn.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_ops.py"), "--quick",
                    "--cnn-shapes", "--json", str(out)], check=True, capture_output=True,
                   timeout=600)
    result = json.loads(out.read_text())
    assert [row["name"] for row in result["rows"]][:2] == ["mnist 1->32 3x3 p0 28",
                                                           "mnist 32->64 3x3 p0 26"]
    for row in result["rows"]:
        if result["numba"]:
            assert row["numba_ms"] > 0 and row["im2col_ms"] > 0
        if result["torch"]:
            assert row["torch_ms"] > 0 and row["ratio"] > 0


def test_profile_step_prints_a_breakdown():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"),
                          "--batch", "2", "--steps", "3"], check=True, capture_output=True,
                         text=True, timeout=600).stdout
    assert "ms per step" in out and "ConvPoolReLU.forward" in out
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"),
                          "--model", "lenet", "--inference", "--batch", "2", "--steps", "2"],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    assert "lenet, batch 2, inference" in out and "ConvPoolReLU.forward" in out
    assert "engine, modules, Python" in out


def _benchmark_module(name):
    """Import benchmarks/<name>.py (the folder is not a package)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_readme_table_is_generated_from_json(tmp_path, monkeypatch):
    run_all = _benchmark_module("run_all")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\noutro\n")
    monkeypatch.setattr(run_all, "README", str(readme))
    results = {"train": {"environment": {"date": "2026-01-01", "cpu": "cpu", "threads": 2,
                                         "python": "3", "numpy": "2", "torch": "2.13",
                                         "minidl": "0.1", "numba": True},
                         "archs": [{"arch": "seed",
                                    "train": {"64": {"minidl": 3.0, "torch": 2.0, "ratio": 1.5}},
                                    "inference": {"1000": {"minidl": 4.0, "torch": 2.0,
                                                           "ratio": 2.0}}}]}}
    run_all.update_readme(run_all.table(results))
    text = readme.read_text()
    assert "old" not in text and "| seed | training, batch 64 (img/s) | 3 | 2 | 1.50x |" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")


def test_bench_dataloader_runs_on_a_tiny_setting(tmp_path):
    out = tmp_path / "loader.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_dataloader.py"),
                    "--quick", "--json", str(out)], check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert [r["num_workers"] for r in rows] == [0, 2] and all(r["minidl_s"] > 0 for r in rows)


def test_bench_transformers_runs_on_a_tiny_setting_and_fills_its_readme_block(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "transformers.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_transformers.py"),
                    "--batch", "2", "--windows", "1", "--steps", "1", "--json", str(out)],
                   check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert [m["model"] for m in result["models"]] == ["mingpt", "fsdp2"]
    for m in result["models"]:
        e = m["train"]
        assert e["minidl"] > 0 and e["torch"] > 0 and e["ratio"] > 0 and m["parameters"] > 0
    bench_transformers = _benchmark_module("bench_transformers")
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- transformers:start -->\nold\n<!-- transformers:end -->\nb\n")
    bench_transformers.update_readme(bench_transformers.table(result), str(readme))
    text = readme.read_text()
    assert "old" not in text and text.startswith("a\n") and text.endswith("b\n")
    ratio = result["models"][0]["train"]["ratio"]
    assert "| mingpt | 2 | " in text and f"| {ratio:.2f}x |" in text


def test_bench_models_runs_on_a_tiny_setting(tmp_path):
    """Every user-written model, minidl against PyTorch (and onnxruntime for
    inference, when installed), in worker processes; the table is generated
    from that JSON."""
    pytest.importorskip("torch")
    out = tmp_path / "models.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_models.py"), "--tiny",
                    "--json", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert [m["model"] for m in result["models"]] == ["article", "mnist", "lenet", "vgg"]
    for m in result["models"]:
        train, infer = m["train"]["4"], m["inference"]["8"]
        assert train["minidl"] > 0 and train["torch"] > 0 and train["ratio"] > 0
        assert infer["minidl"] > 0 and infer["torch"] > 0
        if "onnxruntime" in result["environment"]:
            assert infer["onnxruntime"] > 0 and infer["ratio_onnxruntime"] > 0
    text = _benchmark_module("run_all").models_table({"models": result})
    assert "| mnist | training, batch 4 (img/s) |" in text
    assert text.count("\n| ") == 2 * 4 + 1   # the header and two rows per model


def test_bench_models_twins_compute_the_same_function():
    """The same source text builds the minidl model and its PyTorch twin: with
    the same weights, the same logits (eval mode) for every model."""
    torch = pytest.importorskip("torch")
    bench_models = _benchmark_module("bench_models")
    import minidl
    import numpy as np
    from minidl import nn
    from minidl.nn import functional as F
    for name in bench_models.MODELS:
        minidl.manual_seed(0)
        model, shape, _ = bench_models.build(name, nn, F)
        twin, _, _ = bench_models.build(name, torch.nn, torch.nn.functional)
        twin.load_state_dict({k: torch.from_numpy(np.array(v.numpy()))
                              for k, v in model.state_dict().items()})
        x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
        with minidl.no_grad(), torch.no_grad():
            got = model.eval()(minidl.tensor(x)).numpy()
            expected = twin.eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
