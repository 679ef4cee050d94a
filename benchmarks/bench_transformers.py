"""Training throughput of two small transformers: minidl against PyTorch CPU.

    python benchmarks/bench_transformers.py                  # both models, 2 x 7 windows
    python benchmarks/bench_transformers.py --model fsdp2 --windows 5 --json out.json
    python benchmarks/bench_transformers.py --readme         # also rewrite the README table

The models, as pytorch/examples writes them (``build_models`` below is plain
PyTorch code run unchanged on either framework: minidl has PyTorch's names):

* **mingpt** - distributed/minGPT-ddp's GPT: token embedding plus a learned
  position parameter, blocks of LayerNorm -> ``nn.MultiheadAttention``
  (batch_first, a causal boolean mask) -> Linear -> Dropout and LayerNorm ->
  Linear -> GELU -> Linear -> Dropout, a final LayerNorm and a bias-free head;
  2 layers, 4 heads, width 128, 64 tokens, vocabulary 65, dropout 0.1, AdamW.
* **fsdp2** - distributed/FSDP2's Transformer: token and position
  ``nn.Embedding``, blocks of LayerNorm -> attention by
  ``F.scaled_dot_product_attention(..., is_causal=True)`` with bias-free
  q/k/v/o projections -> Dropout and LayerNorm -> Linear -> GELU -> Linear ->
  Dropout; 2 layers, 4 heads, width 128, 64 tokens, vocabulary 256, dropout
  0.1, Adam.

Method (as bench_train.py): both frameworks start from minidl's initial
weights (through the state dict), train on the same batch (cross-entropy of
the next token, batch 32 unless ``--batch``) with the same thread count, each
in a worker process of its own; after a warm-up, timed windows alternate
minidl, torch, minidl, torch, ... and each side's median window is reported
with the ratio minidl / torch (above 1: minidl is faster), in tokens per second.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from caller_env import CALLER_ENV, restore_thread_settings, torch_worker_env  # before minidl
from worker_process import WorkerProcess

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402  (before NumPy: it sets BLAS thread settings NumPy reads)
import numpy as np  # noqa: E402
from bench_train import SETTLE_SECONDS, environment  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(HERE), "README.md")
START, END = "<!-- transformers:start -->", "<!-- transformers:end -->"
CONFIGS = {
    "mingpt": dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=128, pdrop=0.1),
    "fsdp2": dict(vocab_size=256, max_seq_len=64, n_layers=2, n_heads=4, dim=128,
                  dropout_p=0.1),
}


# ------------------------------------------------------------- the models

def build_models(torch):
    """The two models' classes for ``torch`` (PyTorch, or minidl: the same code)."""
    nn, F = torch.nn, torch.nn.functional

    class CausalSelfAttention(nn.Module):     # minGPT-ddp's MultiheadAttentionLayer
        def __init__(self, c):
            super().__init__()
            self.resid_drop = nn.Dropout(c["pdrop"])
            self.c_proj = nn.Linear(c["n_embd"], c["n_embd"])
            self.attn = nn.MultiheadAttention(embed_dim=c["n_embd"], num_heads=c["n_head"],
                                              dropout=c["pdrop"], batch_first=True)
            self.block_size = c["block_size"]

        def forward(self, x):
            _, seq_size, _ = x.size()
            # True above the diagonal: a key after its query is masked out
            mask = torch.triu(torch.ones(seq_size, seq_size, dtype=torch.bool), diagonal=1)
            y = self.attn(x, x, x, attn_mask=mask)[0]
            return self.resid_drop(self.c_proj(y))

    class GPTBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln1 = nn.LayerNorm(c["n_embd"])
            self.ln2 = nn.LayerNorm(c["n_embd"])
            self.attn = CausalSelfAttention(c)
            self.mlp = nn.Sequential(nn.Linear(c["n_embd"], 4 * c["n_embd"]), nn.GELU(),
                                     nn.Linear(4 * c["n_embd"], c["n_embd"]),
                                     nn.Dropout(c["pdrop"]))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.tok_emb = nn.Embedding(c["vocab_size"], c["n_embd"])
            self.pos_emb = nn.Parameter(torch.zeros(1, c["block_size"], c["n_embd"]))
            self.drop = nn.Dropout(c["pdrop"])
            self.blocks = nn.Sequential(*[GPTBlock(c) for _ in range(c["n_layer"])])
            self.ln_f = nn.LayerNorm(c["n_embd"])
            self.head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)

        def forward(self, idx, targets):
            t = idx.size(1)
            x = self.drop(self.tok_emb(idx) + self.pos_emb[:, :t, :])
            logits = self.head(self.ln_f(self.blocks(x)))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    class Attention(nn.Module):               # FSDP2's model.py
        def __init__(self, a):
            super().__init__()
            self.n_heads, self.head_dim = a["n_heads"], a["dim"] // a["n_heads"]
            self.dropout_p = a["dropout_p"]
            self.wq = nn.Linear(a["dim"], a["dim"], bias=False)
            self.wk = nn.Linear(a["dim"], a["dim"], bias=False)
            self.wv = nn.Linear(a["dim"], a["dim"], bias=False)
            self.wo = nn.Linear(a["dim"], a["dim"], bias=False)
            self.resid_dropout = nn.Dropout(a["dropout_p"])

        def forward(self, x):
            bsz, seq_len, _ = x.size()
            queries, keys, values = self.wq(x), self.wk(x), self.wv(x)
            queries = queries.view(bsz, seq_len, self.n_heads, self.head_dim)
            keys = keys.view(bsz, seq_len, self.n_heads, self.head_dim)
            values = values.view(bsz, seq_len, self.n_heads, self.head_dim)
            output = F.scaled_dot_product_attention(
                queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), None,
                self.dropout_p if self.training else 0, True)
            output = output.transpose(1, 2).contiguous().view(bsz, seq_len, -1)
            return self.resid_dropout(self.wo(output))

    class FeedForward(nn.Module):
        def __init__(self, dim, hidden_dim, dropout_p):
            super().__init__()
            self.w1 = nn.Linear(dim, hidden_dim)
            self.gelu = nn.GELU()
            self.w2 = nn.Linear(hidden_dim, dim)
            self.resid_dropout = nn.Dropout(dropout_p)

        def forward(self, x):
            return self.resid_dropout(self.w2(self.gelu(self.w1(x))))

    class TransformerBlock(nn.Module):
        def __init__(self, a):
            super().__init__()
            self.attention_norm = nn.LayerNorm(a["dim"])
            self.attention = Attention(a)
            self.ffn_norm = nn.LayerNorm(a["dim"])
            self.feed_forward = FeedForward(a["dim"], 4 * a["dim"], a["dropout_p"])

        def forward(self, x):
            h = x + self.attention(self.attention_norm(x))
            return h + self.feed_forward(self.ffn_norm(h))

    class Transformer(nn.Module):
        def __init__(self, a):
            super().__init__()
            self.tok_embeddings = nn.Embedding(a["vocab_size"], a["dim"])
            self.pos_embeddings = nn.Embedding(a["max_seq_len"], a["dim"])
            self.dropout = nn.Dropout(a["dropout_p"])
            self.layers = nn.ModuleList([TransformerBlock(a) for _ in range(a["n_layers"])])
            self.norm = nn.LayerNorm(a["dim"])
            self.output = nn.Linear(a["dim"], a["vocab_size"], bias=False)

        def forward(self, tokens, targets):
            _, seq_len = tokens.size()
            h = self.tok_embeddings(tokens)
            h = self.dropout(h + self.pos_embeddings(torch.arange(0, seq_len)))
            for layer in self.layers:
                h = layer(h)
            logits = self.output(self.norm(h))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return {"mingpt": (GPT, torch.optim.AdamW, 3e-4), "fsdp2": (Transformer, torch.optim.Adam,
                                                                   1e-2)}


def batch_arrays(model, batch):
    """The same token batch in every process: inputs and next-token targets."""
    c = CONFIGS[model]
    vocab, t = c["vocab_size"], c.get("block_size", c.get("max_seq_len"))
    tokens = np.random.default_rng(batch).integers(0, vocab, size=(batch, t + 1))
    return tokens[:, :-1].copy(), tokens[:, 1:].copy()


# -------------------------------------------------------------- runners

class Runner:
    def __init__(self, framework, model, init_path, threads):
        if framework == "torch":
            restore_thread_settings()     # PyTorch as its users run it (see caller_env)
            import torch
            torch.set_num_threads(threads)
            self.fw = torch
            state = {k: torch.from_numpy(np.array(v.numpy()))
                     for k, v in minidl.load(init_path).items()}
        else:
            minidl.set_num_threads(threads)
            self.fw = minidl
            state = minidl.load(init_path)
        cls, opt, lr = build_models(self.fw)[model]
        self.model = cls(CONFIGS[model])
        self.model.load_state_dict(state, strict=True)
        self.opt = opt(self.model.parameters(), lr=lr)
        self.name = model

    def set_batch(self, batch):
        x, y = batch_arrays(self.name, batch)
        self.x, self.y = self.fw.from_numpy(x), self.fw.from_numpy(y)

    def train_steps(self, n):
        model, opt = self.model, self.opt
        model.train()
        for _ in range(n):
            loss = model(self.x, self.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.item())


def worker(framework, model, init_path, threads):
    """A child process answering JSON commands on stdin with timings on stdout."""
    start = time.perf_counter()
    runner = Runner(framework, model, init_path, threads)
    runner.set_batch(2)
    runner.train_steps(1)               # loads (or compiles) Numba's kernels
    print(json.dumps({"first_step_seconds": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "batch":
            runner.set_batch(cmd["batch"])
            reply = {}
        else:   # "train"
            if cmd.get("warmup"):
                runner.train_steps(cmd["warmup"])
            t = time.perf_counter()
            loss = runner.train_steps(cmd["steps"])
            reply = {"seconds": time.perf_counter() - t, "loss": loss}
        print(json.dumps(reply), flush=True)


class Worker(WorkerProcess):
    def __init__(self, framework, model, init_path, threads):
        env = torch_worker_env() if framework == "torch" else dict(CALLER_ENV)
        if framework == "torch":
            env["MINIDL_MALLOC_TUNING"] = "0"
        super().__init__(framework, [sys.executable, os.path.abspath(__file__), "--worker",
                                     framework, "--model", model, "--init", init_path,
                                     "--threads", str(threads)], env)
        self.ready = self.read()

    def ask(self, **cmd):
        return self.request(json.dumps(cmd))


def bench_model(model, batch, windows, steps, threads):
    minidl.manual_seed(0)
    cls = build_models(minidl)[model][0]
    net = cls(CONFIGS[model])
    fd, init_path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    minidl.save(net.state_dict(), init_path)          # the same initial weights for both
    workers = []
    try:
        workers = [Worker(name, model, init_path, threads) for name in ("minidl", "torch")]
        for w in workers:
            w.ask(cmd="batch", batch=batch)
            w.ask(cmd="train", steps=max(2, steps // 3))   # warm-up
        times = {w.name: [] for w in workers}
        for _ in range(windows):
            for w in workers:
                time.sleep(SETTLE_SECONDS)
                times[w.name].append(w.ask(cmd="train", steps=steps,
                                           warmup=max(1, steps // 10))["seconds"])
        tokens = batch * CONFIGS[model].get("block_size", CONFIGS[model].get("max_seq_len"))
        entry = {name: round(tokens * steps / float(np.median(t)), 1)
                 for name, t in times.items()}
        entry["ratio"] = round(entry["minidl"] / entry["torch"], 3)
        entry["ms_per_step"] = {name: round(1000 * float(np.median(t)) / steps, 2)
                                for name, t in times.items()}
    finally:
        for w in workers:
            w.close()
        os.unlink(init_path)
    return {"model": model, "batch": batch, "config": CONFIGS[model],
            "parameters": int(sum(p.numel() for p in net.parameters())), "train": entry}


def table(results):
    """The README's markdown table from the results JSON."""
    env = results["environment"]
    load = env.get("load_average")
    lines = [f"Measured {env['date']} on {env['cpu']}, {env['threads']} threads"
             + (f" (load average {load:.1f} at the start)" if load is not None else "")
             + f", PyTorch {env.get('torch', '-')}, NumPy {env['numpy']}, minidl "
             f"{env['minidl']}; `{results['command']}`.", "",
             "| model | training, batch | minidl (tokens/s) | PyTorch (tokens/s) | "
             "minidl / PyTorch |", "|---|---:|---:|---:|---:|"]
    for r in results["models"]:
        e = r["train"]
        lines.append(f"| {r['model']} | {r['batch']} | {e['minidl']:,.0f} | {e['torch']:,.0f} | "
                     f"{e['ratio']:.2f}x |")
    return "\n".join(lines)


def update_readme(text, path=README):
    """Replace the README block between the transformer markers (written atomically)."""
    with open(path) as f:
        readme = f.read()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{head}{START}\n{text}\n{END}{tail}")
    os.replace(tmp, path)


def _measuring_args(args):
    """The arguments that decide what is measured (the --json output path does not)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif not a.startswith("--json="):
            out.append(a)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["mingpt", "fsdp2", "both"], default="both")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both frameworks (default: minidl's, i.e. the cores)")
    p.add_argument("--windows", type=int, default=7, help="timed windows per framework")
    p.add_argument("--steps", type=int, default=10, help="training steps per window")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--readme", action="store_true", help="rewrite the README's table")
    p.add_argument("--worker", choices=["minidl", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    threads = args.threads or minidl.get_num_threads()
    if args.worker:
        return worker(args.worker, args.model, args.init, threads)
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode:
        sys.exit("bench_transformers: PyTorch is not installed (it is the reference)")
    env = environment(threads)
    env["torch"] = probe.stdout.strip()
    models = ["mingpt", "fsdp2"] if args.model == "both" else [args.model]
    results = {"benchmark": "transformers", "environment": env,
               "command": " ".join(["python benchmarks/bench_transformers.py"]
                                   + _measuring_args(argv if argv is not None
                                                     else sys.argv[1:])),
               "models": [bench_model(m, args.batch, args.windows, args.steps, threads)
                          for m in models]}
    print(table(results))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.json)
    if args.readme:
        update_readme(table(results))
    return results


if __name__ == "__main__":
    main()
