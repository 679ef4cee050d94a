"""The trainer: one resumable training loop for any model, loss and data.

A :class:`Trainer` is given what makes a task - the model, the optimizer, a
loss function, the training loader, and optionally a learning-rate scheduler,
running metrics and an evaluation - and does what every task needs the same
way::

    trainer = Trainer(model, optimizer, F.cross_entropy, train_loader,
                      epochs=5, out="runs/mine", scheduler=scheduler,
                      metrics={"acc": accuracy}, evaluate=evaluate_on_test_set)
    history = trainer.fit()

Per batch ``(inputs, targets)``: ``outputs = model(inputs)`` (or
``forward(model, inputs, targets)``), ``loss_fn(outputs, targets)`` gives the
loss (or ``(loss, {name: part})``, parts reported beside it), backward, the
optimizer's step and the scheduler's (per batch, or per epoch). The loss, its
parts and the metrics stay on the device: they are read once per ``log_every``
steps (one host synchronisation), which is also where a NaN or infinite loss is
noticed; :class:`TrainingDiverged` then names the exact step.

After each epoch: ``evaluate(model)`` under ``no_grad`` and ``eval()`` (a dict
of numbers), one history row, and these files in ``out``:

* ``checkpoint.safetensors`` - model, optimizer, scheduler, epoch, RNG state,
  history and ``settings``; written atomically, so ``resume=True`` continues a
  run and ends with exactly the weights an uninterrupted run would have, and
  refuses a checkpoint whose settings differ;
* ``model.safetensors`` - the weights alone (loadable by ``safetensors.torch``);
* ``metrics.json`` / ``metrics.csv`` - the history, one row per epoch;
* ``curves.png`` (``plots=True``, at the end) - losses and the other metrics.

Ctrl-C saves ``interrupted.safetensors`` before the KeyboardInterrupt goes on.

Distributed training hooks (overridable methods, no-ops in one process):
:attr:`Trainer.is_main` (only that process prints and writes),
:meth:`Trainer.reduce` (sums the epoch's totals across processes),
:meth:`Trainer.after_backward` (where gradients are averaged) and
:meth:`Trainer.on_epoch_start` (calls ``set_epoch`` on the loader or its
sampler, as ``DistributedSampler`` needs).

Under ``mpiexec -n N`` (:mod:`minidl.distributed`) they do so by themselves:
rank 0 alone prints, shows progress and writes files; the gradients are
averaged over the ranks after each backward (the model is not wrapped, so
its checkpoints are those of one process), the epoch's totals summed; a
resume is read by rank 0 and sent to the others. The checkpoint holds every
rank's random state and the world size: a resume with another world size is
refused. The training loader must give each rank its share
(``sampler=DistributedSampler(dataset)``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

from . import backend, distributed
from .fileio import atomic_write_bytes
from .random import get_rng_state, set_rng_state
from .runlock import RunLock
from .fileio import file_in_the_way
from .serialization import CheckpointError, load, save
from .tensor import Tensor, no_grad


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU and CuPy are there, else 'cpu'; checks 'cpu'/'cuda'."""
    if device == "auto":
        return "cuda" if backend.cuda_is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu' or 'cuda'")
    if device == "cuda":
        backend.xp_for("cuda")  # raises a DeviceError saying what is missing
    return device


def write_metrics(out, history):
    """``history`` (a list of dicts) as ``out/metrics.json`` and ``out/metrics.csv``."""
    atomic_write_bytes(os.path.join(out, "metrics.json"),
                       (json.dumps(history, indent=2) + "\n").encode())
    if history:
        fields = list(dict.fromkeys(key for row in history for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(os.path.join(out, "metrics.csv"), buffer.getvalue().encode())


# History columns that are bookkeeping, not curves.
_NOT_PLOTTED = ("epoch", "lr", "seconds", "images_per_s")


def plot_history(history, path, title=None):
    """Losses (keys ending in ``loss``) on the left, every other metric on the
    right, per epoch; needs matplotlib (the examples extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in dict.fromkeys(k for row in history for k in row)
            if k not in _NOT_PLOTTED]
    groups = [[k for k in keys if k.endswith("loss")], [k for k in keys if not k.endswith("loss")]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for key in group:
            rows = [r for r in history if isinstance(r.get(key), (int, float))]
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], "o-", label=key)
        ax.set_xlabel("epoch")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_writable(out):
    """Make ``out`` and check that files can be written there, before any training
    (a read-only folder would otherwise fail only at the first checkpoint)."""
    try:
        os.makedirs(out, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"cannot write the run's files to {out}/: "
                                 f"{file_in_the_way(out)} is a file, not a directory") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise OSError(f"cannot write the run's files to {out}/: {exc.strerror or exc}") from None


def read_checkpoint(path, op, keys):
    """A training checkpoint's state, checked to hold ``keys`` (a CheckpointError
    naming the file otherwise: e.g. model.safetensors, which holds weights only)."""
    state = load(path)
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{op}: {path} is not a training checkpoint of this trainer: it lacks "
            f"{', '.join(missing)} (model.safetensors holds the weights only; use "
            "checkpoint.safetensors)")
    return state


def _raw(value):
    return value._data if isinstance(value, Tensor) else value


def _default_epoch_line(row):
    return "Epoch: {} \tTraining Loss: {:.6f}".format(row["epoch"], row["train_loss"])


class Trainer:
    """Trains ``model`` with ``optimizer`` on ``train_loader``; see the module docstring.

    Arguments past ``train_loader`` (keyword only):

    * ``epochs``, ``out`` - how long, and the run's folder;
    * ``scheduler`` / ``scheduler_step`` - an lr scheduler, stepped per
      ``"batch"`` (default) or per ``"epoch"``;
    * ``metrics`` - ``{name: fn(outputs, targets)}``, each a batch mean (a
      scalar tensor); averaged over the epoch as ``train_<name>``;
    * ``evaluate`` - ``fn(model) -> {name: number}``, after every
      ``eval_every`` epochs and after the last; a non-finite value stops
      the run as diverged;
    * ``forward`` - ``fn(model, inputs, targets) -> outputs`` when the model
      needs more than the inputs while training;
    * ``settings`` - a dict saved in the checkpoint; a resume must match it;
    * ``resume``, ``progress`` (tqdm bars), ``log_every`` (steps between
      reads of the running values), ``plots`` (``curves.png``), ``title``;
    * ``log`` - where lines go (default ``print``); ``epoch_line(row)`` and
      ``final_line(history)`` format the line after each epoch and the last
      one (default: the article's ``Epoch: 1 \\tTraining Loss: ...``; none).
    """

    CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "config")
    is_main = True   # a distributed run: True on rank 0 only

    def __init__(self, model, optimizer, loss_fn, train_loader, *, epochs, out,
                 scheduler=None, scheduler_step="batch", metrics=None, evaluate=None,
                 eval_every=1, forward=None, settings=None, resume=False, progress=True,
                 log_every=20, plots=False, title=None, log=print, epoch_line=None,
                 final_line=None):
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        if scheduler_step not in ("batch", "epoch"):
            raise ValueError(f"scheduler_step must be 'batch' or 'epoch', got {scheduler_step!r}")
        if int(log_every) != log_every or log_every < 1:
            raise ValueError(f"log_every must be a positive int, got {log_every}")
        if int(eval_every) != eval_every or eval_every < 1:
            raise ValueError(f"eval_every must be a positive int, got {eval_every}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train_loader, self.scheduler = train_loader, scheduler
        self.scheduler_step, self.metrics = scheduler_step, dict(metrics or {})
        self.evaluate_fn, self.eval_every, self.forward = evaluate, int(eval_every), forward
        self.epochs, self.out = int(epochs), out
        self.settings = dict(settings or {})
        self.progress, self.log_every, self.plots, self.title = progress, int(log_every), \
            plots, title
        self._log = log
        self.epoch_line = epoch_line or _default_epoch_line
        self.final_line = final_line
        self.epoch = 0            # epochs completed
        self.history = []
        self.checkpoint_path = os.path.join(out, "checkpoint.safetensors")
        self._replicas = None
        if distributed.world_size() > 1:
            self._join_ranks()
        if self.is_main:
            _check_writable(out)
        if resume:
            self.restore(self.checkpoint_path)

    # ------------------------------------------------ distributed hooks
    def _join_ranks(self):
        """Set up a run of several processes (see the module docstring)."""
        from .data import DataLoader
        from .nn.parallel import DistributedDataParallel
        n = distributed.world_size()
        if isinstance(self.train_loader, DataLoader) and self.train_loader.sampler is None:
            raise ValueError(
                f"this run has {n} processes but the training loader gives each of them the "
                "whole dataset: build it with sampler=minidl.data.DistributedSampler(dataset)")
        self.is_main = distributed.is_main()
        self.settings["world_size"] = n
        if not isinstance(self.model, DistributedDataParallel):   # which averages by itself
            # rank 0's weights to every rank, and the averaging of the gradients
            self._replicas = DistributedDataParallel(self.model)

    def reduce(self, totals: np.ndarray) -> np.ndarray:
        """Sum an epoch's totals (float64 vector) over the processes of a run."""
        return distributed.all_reduce(np.array(totals, dtype=np.float64))

    def after_backward(self) -> None:
        """Between backward and the optimizer's step (where a distributed run
        averages the gradients across processes)."""
        if self._replicas is not None:
            self._replicas.average_gradients()

    def on_epoch_start(self, epoch: int) -> None:
        """Before each epoch (0-based): tell a sampler which epoch it is."""
        for owner in (self.train_loader, getattr(self.train_loader, "sampler", None)):
            set_epoch = getattr(owner, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)
                return

    def log(self, message):
        if self.is_main:
            self._log(message)

    # ------------------------------------------------------- checkpoints
    def state(self, rng=None):
        """The checkpoint's contents; ``rng``: the random state to record
        (default: this process's)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else {},
                "epoch": self.epoch, "rng": rng or get_rng_state(), "history": self.history,
                "config": self.settings}

    def save_checkpoint(self, path=None):
        """Write the full state to ``path`` (default: the epoch checkpoint); the
        epoch checkpoint also refreshes ``model.safetensors``, which thus
        always holds the weights of the last finished epoch."""
        path = path or self.checkpoint_path
        rng = None
        if path == self.checkpoint_path and distributed.world_size() > 1:
            # every rank's streams (dropout, augmentation), gathered where all
            # ranks are: the end of an epoch (not Ctrl-C's save, which may
            # find them elsewhere)
            ranks = [None] * distributed.world_size()
            distributed.all_gather_object(ranks, get_rng_state())
            rng = {**ranks[0], "ranks": ranks}
        if not self.is_main:
            return path
        save(self.state(rng), path)
        if path == self.checkpoint_path:
            save(self.model.state_dict(), os.path.join(self.out, "model.safetensors"))
        return path

    def _read_checkpoint(self, path):
        """The checkpoint to resume from; in a run of several processes rank 0
        reads it and sends it (or its error) to the others, each of which then
        takes its own random state from it."""
        found = [None]
        if self.is_main:
            try:
                if not os.path.exists(path):
                    raise FileNotFoundError(
                        f"--resume: no checkpoint at {path}; train without --resume first (or "
                        "point --out at the run to continue)")
                found[0] = read_checkpoint(path, "--resume", self.CHECKPOINT_KEYS)
            except Exception as exc:   # noqa: BLE001 (raised below, on every rank)
                found[0] = exc
        distributed.broadcast_object_list(found)
        if isinstance(found[0], Exception):
            raise found[0]
        state, n = found[0], distributed.world_size()
        if state["config"].get("world_size", 1) != n:
            raise ValueError(
                f"--resume: the checkpoint {path} belongs to a run of "
                f"{state['config'].get('world_size', 1)} processes, this one has {n}: resume "
                "with as many (the data's split follows them), or start a new run")
        ranks = state["rng"].get("ranks") or [state["rng"]]
        state["rng"] = ranks[distributed.rank()]
        return state

    def restore(self, path):
        state = self._read_checkpoint(path)
        saved = state["config"]   # read_checkpoint made sure it is there
        # (checkpoints of older versions recorded fewer settings: those are compared)
        differ = [f"{key}={saved[key]!r} (this run: {value!r})"
                  for key, value in self.settings.items()
                  if key in saved and saved[key] != value]
        if differ:
            raise ValueError(
                f"--resume: the checkpoint {path} belongs to a run with other settings: "
                f"{', '.join(differ)}. Resume with the same settings, or start a new run "
                "(another --out, or without --resume)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.log(f"Resumed from {path} after epoch {self.epoch}")

    # ---------------------------------------------------------- training
    def _step(self, inputs, targets):
        """One optimisation step; returns the loss, its parts and the metrics
        as one device vector (no host synchronisation)."""
        model, opt = self.model, self.optimizer
        outputs = self.forward(model, inputs, targets) if self.forward else model(inputs)
        loss = self.loss_fn(outputs, targets)
        parts = {}
        if isinstance(loss, tuple):
            loss, parts = loss
        opt.zero_grad()
        loss.backward()
        self.after_backward()
        opt.step()
        if self.scheduler is not None and self.scheduler_step == "batch":
            self.scheduler.step()
        with no_grad():
            values = [_raw(loss)] + [_raw(v) for v in parts.values()] + \
                     [_raw(fn(outputs, targets)) for fn in self.metrics.values()]
        xp = backend.get_array_module(values[0])
        return list(parts), xp.stack([xp.asarray(v, dtype=xp.float32).reshape(()) for v in values])

    def train_epoch(self):
        """One pass over the loader; returns ({train_<name>: mean}, seconds, samples)."""
        self.model.train()
        self.on_epoch_start(self.epoch)
        steps = len(self.train_loader)
        bar = _progress(steps, f"epoch {self.epoch + 1}/{self.epochs}",
                        self.progress and self.is_main)
        pending, sizes = [], []      # device vectors and batch sizes since the last read
        totals, seen, names = None, 0, None
        start = time.perf_counter()
        for step, (inputs, targets) in enumerate(self.train_loader):
            # Overflow shows as a non-finite loss, caught below with a message that
            # says where; NumPy's own warnings would come first and say less.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                part_names, values = self._step(inputs, targets)
            pending.append(values)
            sizes.append(len(inputs))
            if len(pending) < self.log_every and step != steps - 1:
                continue
            rows = backend.as_numpy(backend.get_array_module(values).stack(pending))
            bad = np.flatnonzero(~np.isfinite(rows[:, 0]))
            if len(bad):
                at = step - len(pending) + 1 + int(bad[0])
                raise self._diverged(
                    f"the loss became {rows[bad[0], 0]} at epoch {self.epoch + 1}, step "
                    f"{at + 1} (global step {self.epoch * steps + at + 1})")
            weighted = (rows.astype(np.float64) * np.asarray(sizes, np.float64)[:, None]).sum(0)
            totals = weighted if totals is None else totals + weighted
            seen += sum(sizes)
            names = ["loss", *part_names, *self.metrics]
            if bar is not None:
                bar.update(len(pending))
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix({**{n: f"{v / seen:.4g}" for n, v in zip(names, totals)},
                                 "img_s": f"{rate:,.0f}"})
            pending, sizes = [], []
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        if totals is None:
            raise ValueError("the training loader gave no batches")
        reduced = self.reduce(np.append(totals, seen))
        means = {f"train_{n}": float(v / reduced[-1]) for n, v in zip(names, reduced[:-1])}
        return means, seconds, int(reduced[-1])

    def evaluate(self):
        """``evaluate(model)`` under no_grad and eval(); {} without one."""
        if self.evaluate_fn is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            with no_grad(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return dict(self.evaluate_fn(self.model))
        finally:
            self.model.train(was_training)

    def _diverged(self, what):
        last = self.checkpoint_path if self.epoch else "none (no epoch finished)"
        return TrainingDiverged(f"{what}; last good checkpoint: {last}. Try a lower "
                                "learning rate.")

    def _check_finite(self, results):
        for name, value in results.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise self._diverged(
                    f"the {name.replace('_', ' ')} became {value} after epoch {self.epoch + 1}: "
                    "the weights are no longer finite; this epoch is not saved")
        for name, p in self.model.named_parameters():
            xp = backend.get_array_module(p._data)
            if not bool(xp.isfinite(p._data).all()):
                raise self._diverged(
                    f"the parameter {name} is no longer finite after epoch {self.epoch + 1}; "
                    "this epoch is not saved")

    def fit(self):
        """Train the remaining epochs; returns the history (a list of dicts).

        The main process holds ``out`` meanwhile (:class:`minidl.runlock.RunLock`):
        a second run on the same directory is refused with ``RunLocked``."""
        if not self.is_main:
            return self._fit()
        with RunLock(self.out, log=self.log):
            return self._fit()

    def _fit(self):
        try:
            while self.epoch < self.epochs:
                means, seconds, seen = self.train_epoch()
                last = self.epoch + 1 == self.epochs
                results = self.evaluate() if last or (self.epoch + 1) % self.eval_every == 0 \
                    else {}
                self._check_finite(results)
                if self.scheduler is not None and self.scheduler_step == "epoch":
                    self.scheduler.step()
                self.epoch += 1
                row = {"epoch": self.epoch}
                row.update({k: round(v, 6) for k, v in means.items()})
                row.update({k: round(v, 6) if isinstance(v, float) else v
                            for k, v in results.items()})
                row.update({"lr": self.optimizer.param_groups[0]["lr"],
                            "seconds": round(seconds, 3),
                            "images_per_s": round(seen / seconds, 1)})
                self.history.append(row)
                self.save_checkpoint()
                if self.is_main:
                    write_metrics(self.out, self.history)
                self.log(self.epoch_line(row))
        except KeyboardInterrupt:
            path = self.save_checkpoint(os.path.join(self.out, "interrupted.safetensors"))
            self.log(f"\nInterrupted: state saved to {path} (the last finished epoch is in "
                     f"{self.checkpoint_path}; --resume continues from there)")
            raise
        if self.plots and self.is_main and self.history:
            plot_history(self.history, os.path.join(self.out, "curves.png"), self.title)
        if self.final_line is not None:
            self.log(self.final_line(self.history))
        return self.history


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra: train silently without it
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True)
