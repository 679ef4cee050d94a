"""Run every benchmark, save the JSON, and regenerate the README's results table.

    python benchmarks/run_all.py            # ~12 minutes on 2 cores
    python benchmarks/run_all.py --quick    # a tiny setting (what the tests run)
    python benchmarks/run_all.py --table-only   # rebuild the README table from results.json

Results go to benchmarks/results.json; the README sections between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` (the zoo model, ops, graph)
and between ``<!-- models:start -->`` and ``<!-- models:end -->`` (the
user-written models of bench_models.py) are rewritten from it, never typed by
hand.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results.json")
README = os.path.join(ROOT, "README.md")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
MODELS_START, MODELS_END = "<!-- models:start -->", "<!-- models:end -->"


def run(script, args, quick):
    """Run one benchmark script with --json into a temp file; return its JSON."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        cmd = [sys.executable, os.path.join(HERE, script), *args, "--json", path]
        print("$", " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd),
              flush=True)
        subprocess.run(cmd, check=True, timeout=1800)
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def table(results):
    """Markdown for the README from the merged results."""
    lines = []
    train = results.get("train")
    if train:
        env = train["environment"]
        lines += [f"Measured {env['date']} on {env['cpu']}, {env['threads']} threads, Python "
                  f"{env['python']}, NumPy {env['numpy']}, PyTorch {env.get('torch', '-')}, "
                  f"minidl {env['minidl']} (Numba kernels: {env['numba']}). Reproduce with "
                  f"`python benchmarks/run_all.py`.", "",
                  "| model | measure | minidl | PyTorch | minidl / PyTorch |",
                  "|---|---|---:|---:|---:|"]
        for r in train["archs"]:
            for batch, e in r["train"].items():
                lines.append(f"| {r['arch']} | training, batch {batch} (img/s) | "
                             f"{e['minidl']:,.0f} | {e.get('torch', 0):,.0f} | "
                             f"{e.get('ratio', 0):.2f}x |")
            e = r["inference"]["1000"]
            lines.append(f"| {r['arch']} | inference, batch 1000 (img/s) | {e['minidl']:,.0f} | "
                         f"{e.get('torch', 0):,.0f} | {e.get('ratio', 0):.2f}x |")
            m = r.get("peak_rss_mib")
            if m and m.get("minidl") and m.get("torch"):
                lines.append(f"| {r['arch']} | peak RSS training (MiB, lower is better) | "
                             f"{m['minidl']:,.0f} | {m['torch']:,.0f} | "
                             f"{m['minidl'] / m['torch']:.2f}x |")
    ops = results.get("ops")
    if ops and ops.get("rows"):
        lines += ["", "| op (forward + backward) | minidl Numba (ms) | minidl NumPy (ms) | "
                      "PyTorch (ms) | speed-up vs PyTorch |", "|---|---:|---:|---:|---:|"]
        for row in ops["rows"]:
            lines.append(f"| {row['name']} | {row['numba_ms']:.3f} | {row['numpy_ms']:.3f} | "
                         f"{row['torch_ms']:.3f} | {row['ratio']:.2f}x |")
        notes = []
        if ops.get("model_shapes_ratio"):
            notes.append(f"the model's four layers together (each framework's own activation "
                         f"layout): {ops['model_shapes_ratio']:.2f}x PyTorch's speed")
        first = ops.get("first_conv_fresh_process_s") or {}
        if first.get("numba_cache") is not None:
            notes.append(f"a fresh process reaches the end of its first conv+pool "
                         f"forward+backward in {first['numba_cache']:.2f} s with Numba's cache "
                         f"({first['no_cache']:.2f} s compiling from scratch)")
        if notes:
            lines += ["", "Ops: " + "; ".join(notes) + "."]
    graph = results.get("graph")
    if graph:
        size = "x".join(str(n) for n in graph.get("shape", (64, 64)))
        lines += ["", f"Graph overhead: a {graph.get('ops', 1000)}-op elementwise chain on "
                      f"{size}, forward + "
                      f"backward: minidl {graph['minidl_ms']:.1f} ms, PyTorch "
                      f"{graph['torch_ms']:.1f} ms (ratio {graph['ratio']:.2f})."]
    return "\n".join(lines)


def models_table(results):
    """Markdown for the README's user-written models (bench_models.py's JSON)."""
    models = results.get("models")
    if not models:
        return ""
    env = models["environment"]
    lines = [f"Measured {env['date']} on {env['cpu']}, {env['threads']} threads, PyTorch "
             f"{env.get('torch', '-')}, onnxruntime {env.get('onnxruntime', '-')}, fusion "
             f"{'on' if env.get('fusion', True) else 'off'}; load average "
             f"{env.get('load_average', 0):.1f} at the start (a shared machine: single runs "
             f"of these ratios vary widely). Reproduce with "
             f"`python benchmarks/bench_models.py`.", "",
             "| model | measure | minidl | PyTorch | minidl / PyTorch | onnxruntime | "
             "minidl / onnxruntime |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in models["models"]:
        rows = [(f"training, batch {b}", e) for b, e in r["train"].items()]
        rows += [(f"inference, batch {b}", e) for b, e in r["inference"].items()]
        for what, e in rows:
            ort = (f"{e['onnxruntime']:,.0f} | {e['ratio_onnxruntime']:.2f}x"
                   if "onnxruntime" in e else "- | -")
            lines.append(f"| {r['model']} | {what} (img/s) | {e['minidl']:,.0f} | "
                         f"{e.get('torch', 0):,.0f} | {e.get('ratio', 0):.2f}x | {ort} |")
    return "\n".join(lines)


def update_readme(text, start=START, end=END):
    with open(README) as f:
        readme = f.read()
    if start not in readme or end not in readme:
        raise SystemExit(f"run_all: {README} has no {start} ... {end} section")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{text}\n{end}{tail}"
    tmp = README + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, README)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny settings; neither results.json nor the README is updated")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.table_only:
        with open(args.out) as f:
            results = json.load(f)
        update_readme(table(results))
        update_transformers_readme(results)
        if results.get("models"):
            update_readme(models_table(results), MODELS_START, MODELS_END)
        return
    q = args.quick
    results = {
        "train": run("bench_train.py", ["--windows", "1", "--steps", "2", "--batch-sizes", "8",
                                        "--arch", "seed"] if q else [], q),
        "ops": run("bench_ops.py", ["--quick"] if q else [], q),
        "graph": run("bench_graph.py", ["--quick"] if q else [], q),
        "transformers": run("bench_transformers.py", ["--batch", "2", "--windows", "1",
                                                      "--steps", "1"] if q else [], q),
        "models": run("bench_models.py", ["--tiny"] if q else [], q),
    }
    if not q or args.out != RESULTS:   # a smoke run never overwrites the measured results
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.out)
    print(table(results))
    print(models_table(results))
    if not q:
        update_readme(table(results))
        update_readme(models_table(results), MODELS_START, MODELS_END)
        update_transformers_readme(results)


def update_transformers_readme(results):
    """bench_transformers' own README block (its markers), from its part of the results."""
    if results.get("transformers"):
        sys.path.insert(0, HERE)
        import bench_transformers
        bench_transformers.update_readme(bench_transformers.table(results["transformers"]),
                                         README)


if __name__ == "__main__":
    main()
