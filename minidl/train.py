"""The trainer: SGD with momentum and cross-entropy on MNIST, resumable.

One :func:`fit` call trains a :class:`~minidl.models.CNNAttention` as the
article does (SGD, lr 0.01, momentum 0.9, cross-entropy) with a cosine
learning-rate schedule stepped per batch, evaluates on the test set after
each epoch (under ``no_grad`` and ``eval()``), and writes to ``config.out``:

* ``checkpoint.safetensors`` - model, optimizer, scheduler, epoch, RNG state,
  history; written atomically after every epoch, so ``resume=True`` continues
  a run and ends with exactly the weights an uninterrupted run would have;
* ``model.safetensors`` - the weights alone (loadable by ``safetensors.torch``);
* ``metrics.json`` / ``metrics.csv`` - one row per epoch.

A NaN or infinite loss stops training with :class:`TrainingDiverged`, naming
the step and the last good checkpoint; Ctrl-C saves ``interrupted.safetensors``
before the KeyboardInterrupt goes on.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

from . import backend, optim
from .data import Compose, DataLoader, Normalize, RandomShift, TensorDataset, ToFloat
from .fileio import atomic_write_bytes
from .models import CNNAttention
from .nn import functional as F
from .random import get_rng_state, manual_seed, set_rng_state
from .serialization import CheckpointError, load, save
from .tensor import Tensor, no_grad


@dataclasses.dataclass
class TrainConfig:
    arch: str = "default"
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"          # "cosine" (per batch, to 0) or "constant"
    shift: int = 2                    # random-shift augmentation, pixels (0: off)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    train_limit: int | None = None    # use the first N training images (smoke runs)
    test_limit: int | None = None
    out: str = "runs/mnist_cnn_attn"
    resume: bool = False
    progress: bool = True
    eval_batch_size: int = 1000

    def validate(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"learning rate must be positive and finite, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight decay must be non-negative and finite, got "
                             f"{self.weight_decay}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval batch size must be at least 1, got {self.eval_batch_size}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}: expected 'cosine' or "
                             "'constant'")
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0 pixels, got {self.shift}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        from .models.cnn_attention import ARCHS
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: expected one of {sorted(ARCHS)}")
        resolve_device(self.device)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if backend.cuda_is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu' or 'cuda'")
    if device == "cuda":
        backend.xp_for("cuda")  # raises a DeviceError saying what is missing
    return device


# MNIST's pixel mean and standard deviation (of k/255 values over the training set).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def images_to_float(images):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] then
    normalised with MNIST's mean and std: the model's input."""
    return Normalize(MNIST_MEAN, MNIST_STD)(ToFloat()(images))


def load_mnist(data_dir=None, train_limit=None, test_limit=None, download=True):
    """(train images, train labels, test images, test labels): uint8 (N, 28, 28), int64."""
    from .data import MNIST
    train = MNIST(root=data_dir, train=True, download=download)
    test = MNIST(root=data_dir, train=False, download=download)
    return (train.images[:train_limit], train.labels[:train_limit],
            test.images[:test_limit], test.labels[:test_limit])


def evaluate(model, images, labels, batch_size=1000, device="cpu"):
    """(mean loss, accuracy in %) of ``model`` on uint8 images, under no_grad and eval()."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    with no_grad():
        for start in range(0, len(images), batch_size):
            x = Tensor(images_to_float(images[start:start + batch_size]), device=device)
            y = Tensor(labels[start:start + batch_size], device=device)
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum").item())
            correct += int((logits.argmax(axis=1)._data == y._data).sum())
    model.train(was_training)
    n = max(len(images), 1)
    return total_loss / n, 100.0 * correct / n


def write_metrics(out, history):
    atomic_write_bytes(os.path.join(out, "metrics.json"),
                       (json.dumps(history, indent=2) + "\n").encode())
    if history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(os.path.join(out, "metrics.csv"), buffer.getvalue().encode())


def _check_writable(out):
    """Make ``out`` and check that files can be written there, before any training
    (a read-only folder would otherwise fail only at the first checkpoint)."""
    os.makedirs(out, exist_ok=True)
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


class Trainer:
    """Owns the model, optimizer, scheduler and data of one training run."""

    def __init__(self, config: TrainConfig, data=None, log=print):
        config.validate()
        self.config, self.log = config, log
        self.device = resolve_device(config.device)
        manual_seed(config.seed)
        self.train_x, self.train_y, self.test_x, self.test_y = data if data is not None else \
            load_mnist(config.data_dir, config.train_limit, config.test_limit)
        self.model = CNNAttention(config.arch).to(self.device)
        self.optimizer = optim.SGD(self.model.parameters(), lr=config.lr,
                                   momentum=config.momentum, weight_decay=config.weight_decay)
        # Shift before normalising, so the pixels shifted in are background (0).
        augment = [RandomShift(config.shift)] if config.shift else []
        transform = Compose([ToFloat(), *augment, Normalize(MNIST_MEAN, MNIST_STD)])
        self.loader = DataLoader(
            TensorDataset(self.train_x, self.train_y, transform=transform),
            batch_size=config.batch_size, shuffle=True, device=self.device)
        self.steps_per_epoch = len(self.loader)
        total = config.epochs * self.steps_per_epoch
        self.scheduler = (optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
                          if config.schedule == "cosine" else
                          optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0))
        self.epoch = 0            # epochs completed
        self.history = []
        _check_writable(config.out)
        self.checkpoint_path = os.path.join(config.out, "checkpoint.safetensors")
        if config.resume:
            self.restore(self.checkpoint_path)

    # ------------------------------------------------------- checkpoints
    # The settings a resumed run must share with its checkpoint: each shapes
    # the run (the cosine schedule's length is epochs x steps per epoch, and
    # the optimizer's and scheduler's saved states carry lr, momentum and
    # weight decay), so a resume with another value would silently train a
    # different run than either setting asks for.
    RUN_SETTINGS = ("arch", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                    "schedule", "shift", "seed", "train_limit")
    CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "config")

    def state(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "rng": get_rng_state(), "history": self.history,
                "config": {key: getattr(self.config, key) for key in self.RUN_SETTINGS}}

    def save_checkpoint(self, path=None):
        """Write the full state to ``path`` (default: the epoch checkpoint); the
        epoch checkpoint also refreshes ``model.safetensors``, which thus
        always holds the weights of the last finished epoch."""
        path = path or self.checkpoint_path
        save(self.state(), path)
        if path == self.checkpoint_path:
            save(self.model.state_dict(), os.path.join(self.config.out, "model.safetensors"))
        return path

    def restore(self, path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}; train without "
                                    "--resume first (or point --out at the run to continue)")
        state = read_checkpoint(path, "--resume", self.CHECKPOINT_KEYS)
        saved = state["config"]   # read_checkpoint made sure it is there
        # (checkpoints of older versions recorded fewer settings: those are compared)
        differ = [f"{key}={saved[key]!r} (this run: {getattr(self.config, key)!r})"
                  for key in self.RUN_SETTINGS
                  if key in saved and saved[key] != getattr(self.config, key)]
        if differ:
            raise ValueError(
                f"--resume: the checkpoint {path} belongs to a run with other settings: "
                f"{', '.join(differ)}. Resume with the same settings, or start a new run "
                "(another --out, or without --resume)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.log(f"Resumed from {path} after epoch {self.epoch}")

    # ---------------------------------------------------------- training
    def train_epoch(self):
        cfg, model, opt = self.config, self.model, self.optimizer
        model.train()
        bar = _progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}",
                        cfg.progress)
        loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        for step, (x, y) in enumerate(self.loader):
            # Overflow is caught below as a non-finite loss, with a message that says
            # where; NumPy's own warnings would only come first and say less.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
            value = float(loss.item())
            if not math.isfinite(value):
                raise self._diverged(
                    f"the loss became {value} at epoch {self.epoch + 1}, step {step + 1} "
                    f"(global step {self.epoch * self.steps_per_epoch + step + 1})")
            opt.step()
            self.scheduler.step()
            n = len(y._data)
            loss_sum += value * n
            correct += int((logits._data.argmax(axis=1) == y._data).sum())
            seen += n
            if bar is not None:
                bar.update(1)
                if step % 20 == 0 or step == self.steps_per_epoch - 1:
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                                    acc=f"{100 * correct / seen:.2f}%", img_s=f"{rate:,.0f}")
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), seconds, seen

    def _diverged(self, what):
        last = self.checkpoint_path if self.epoch else "none (no epoch finished)"
        return TrainingDiverged(f"{what}; last good checkpoint: {last}. Try a lower "
                                "learning rate.")

    def fit(self):
        cfg = self.config
        try:
            while self.epoch < cfg.epochs:
                train_loss, train_acc, seconds, seen = self.train_epoch()
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    test_loss, test_acc = evaluate(self.model, self.test_x, self.test_y,
                                                   cfg.eval_batch_size, self.device)
                if not math.isfinite(test_loss):   # the epoch's last updates blew up
                    raise self._diverged(
                        f"the test loss became {test_loss} after epoch {self.epoch + 1}: the "
                        f"weights are no longer finite; this epoch is not saved")
                self.epoch += 1
                self.history.append({
                    "epoch": self.epoch, "train_loss": round(train_loss, 6),
                    "train_acc": round(train_acc, 4), "test_loss": round(test_loss, 6),
                    "test_acc": round(test_acc, 4), "lr": self.optimizer.param_groups[0]["lr"],
                    "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)})
                self.save_checkpoint()
                write_metrics(cfg.out, self.history)
                self.log("Epoch: {} \tTraining Loss: {:.6f}".format(self.epoch, train_loss))
        except KeyboardInterrupt:
            path = self.save_checkpoint(os.path.join(cfg.out, "interrupted.safetensors"))
            self.log(f"\nInterrupted: state saved to {path} (the last finished epoch is in "
                     f"{self.checkpoint_path}; --resume continues from there)")
            raise
        final = self.history[-1]["test_acc"] if self.history else float("nan")
        self.log("Test Accuracy: {:.2f} %".format(final))
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


def fit(config: TrainConfig, data=None, log=print):
    """Train per ``config``; returns (trainer, history)."""
    trainer = Trainer(config, data=data, log=log)
    return trainer, trainer.fit()
