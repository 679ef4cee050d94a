"""Train the article's CNN+Attention model on MNIST, or classify digit images.

    python examples/mnist_cnn_attn.py                       # train with the defaults
    python examples/mnist_cnn_attn.py --arch seed --epochs 3
    python examples/mnist_cnn_attn.py --resume              # continue runs/mnist_cnn_attn
    python examples/mnist_cnn_attn.py predict digit.png     # classify with the saved model
    python examples/mnist_cnn_attn.py export model.onnx     # the saved model as ONNX

Training writes to --out: checkpoint.safetensors, model.safetensors,
metrics.json/.csv, curves.png (loss and accuracy per epoch) and attention.png
(test digits with what the attention weighted drawn over them).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

try:   # before NumPy: minidl sets BLAS thread settings that NumPy reads when it loads
    import minidl
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import minidl

import dataclasses  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402

from minidl import optim  # noqa: E402
from minidl.data import (Compose, DataLoader, DistributedSampler, Normalize,  # noqa: E402
                         RandomShift, TensorDataset, ToFloat)
from minidl.models import CNNAttention, num_parameters  # noqa: E402
from minidl.nn import functional as F  # noqa: E402
from minidl.data import DataError  # noqa: E402
from minidl.runlock import RunLocked  # noqa: E402
from minidl.serialization import CheckpointError  # noqa: E402
from minidl.train import (Trainer, TrainingDiverged, read_checkpoint,  # noqa: E402
                          resolve_device)

DEFAULT_OUT = os.path.join("runs", "mnist_cnn_attn")


# ------------------------------------------------------------ the recipe

@dataclasses.dataclass
class TrainConfig:
    """The classifier's recipe: the article's SGD (lr 0.01, momentum 0.9) and
    cross-entropy, a cosine schedule stepped per batch, random shifts."""
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
    out: str = DEFAULT_OUT
    resume: bool = False
    progress: bool = True
    plots: bool = False               # curves.png at the end (needs matplotlib)
    eval_batch_size: int = 1000

    # The settings a resumed run must share with its checkpoint: each shapes
    # the run (the cosine schedule's length is epochs x steps per epoch, and
    # the optimizer's and scheduler's saved states carry lr, momentum and
    # weight decay), so a resume with another value would silently train a
    # different run than either setting asks for.
    RUN_SETTINGS = ("arch", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                    "schedule", "shift", "seed", "train_limit")

    def validate(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.batch_size % minidl.distributed.world_size():
            raise ValueError(f"batch size {self.batch_size} (the global batch) does not split "
                             f"evenly over {minidl.distributed.world_size()} processes")
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
        if not 0 <= self.shift <= MAX_SHIFT:
            raise ValueError(f"shift must be between 0 and {MAX_SHIFT} pixels (half the 28-pixel "
                             f"image: a larger shift moves most digits out of it), got "
                             f"{self.shift}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        from minidl.models.cnn_attention import ARCHS
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: expected one of {sorted(ARCHS)}")
        resolve_device(self.device)


# The largest random shift: half the image side (beyond it most shifted digits leave the image)
MAX_SHIFT = 14

# MNIST's pixel mean and standard deviation (of k/255 values over the training set).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def images_to_float(images):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] then
    normalised with MNIST's mean and std: the model's input."""
    return Normalize(MNIST_MEAN, MNIST_STD)(ToFloat()(images))


def load_mnist(data_dir=None, train_limit=None, test_limit=None, download=True):
    """(train images, train labels, test images, test labels): uint8 (N, 28, 28), int64."""
    from minidl.data import MNIST
    train = MNIST(root=data_dir, train=True, download=download)
    test = MNIST(root=data_dir, train=False, download=download)
    return (train.images[:train_limit], train.labels[:train_limit],
            test.images[:test_limit], test.labels[:test_limit])


def accuracy(logits, labels):
    """Percent of the batch classified right (a device scalar)."""
    return (logits.argmax(dim=1) == labels).float().mean() * 100


def evaluate(model, images, labels, batch_size=1000, device="cpu"):
    """{"test_loss": mean loss, "test_acc": accuracy in %} of ``model`` on uint8
    images; sums stay on the device until the end. Under ``mpiexec -n N`` each
    rank takes every N-th image, and the sums are added up over the ranks."""
    rank, ranks = minidl.distributed.rank(), minidl.distributed.world_size()
    images, labels, n = images[rank::ranks], labels[rank::ranks], len(images)
    total_loss = correct = 0
    for start in range(0, len(images), batch_size):
        x = minidl.Tensor(images_to_float(images[start:start + batch_size]), device=device)
        y = minidl.Tensor(labels[start:start + batch_size], device=device)
        logits = model(x)
        total_loss = total_loss + F.cross_entropy(logits, y, reduction="sum")
        correct = correct + (logits.argmax(dim=1) == y).float().sum()
    sums = minidl.distributed.all_reduce(np.array(   # 0 where a rank had no images
        [float(v.item()) if isinstance(v, minidl.Tensor) else 0.0 for v in (total_loss, correct)]))
    return {"test_loss": sums[0] / n if n else 0.0, "test_acc": 100.0 * sums[1] / n if n else 0.0}


def make_trainer(config: TrainConfig, data=None, log=print):
    """The framework's Trainer, set up with this recipe; ``data`` as
    :func:`load_mnist` returns it (loaded per ``config`` when None)."""
    config.validate()
    device = resolve_device(config.device)
    minidl.manual_seed(config.seed)
    train_x, train_y, test_x, test_y = data if data is not None else \
        load_mnist(config.data_dir, config.train_limit, config.test_limit)
    model = CNNAttention(config.arch).to(device)
    optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    # Shift before normalising, so the pixels shifted in are background (0).
    augment = [RandomShift(config.shift)] if config.shift else []
    transform = Compose([ToFloat(), *augment, Normalize(MNIST_MEAN, MNIST_STD)])
    dataset = TensorDataset(train_x, train_y, transform=transform)
    # Under mpiexec -n N: N ranks of batch_size / N images, each a share of one shuffle
    ranks = minidl.distributed.world_size()
    sampler = DistributedSampler(dataset, seed=config.seed) if ranks > 1 else None
    loader = DataLoader(dataset, batch_size=config.batch_size // ranks, shuffle=sampler is None,
                        sampler=sampler, device=device)
    total = config.epochs * len(loader)
    scheduler = (optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
                 if config.schedule == "cosine" else
                 optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    return Trainer(
        model, optimizer, F.cross_entropy, loader, epochs=config.epochs, out=config.out,
        scheduler=scheduler, metrics={"acc": accuracy},
        evaluate=lambda m: evaluate(m, test_x, test_y, config.eval_batch_size, device),
        settings={key: getattr(config, key) for key in config.RUN_SETTINGS},
        resume=config.resume, progress=config.progress, plots=config.plots,
        title="CNN+Attention on MNIST", log=log,
        final_line=lambda history: "Test Accuracy: {:.2f} %".format(
            history[-1]["test_acc"] if history else float("nan")))


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments end in one line on stderr, not a usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message, code=2):
    print(f"mnist_cnn_attn.py: error: {message}", file=sys.stderr)
    minidl.distributed.abort(code)   # sys.exit, ending every rank under mpiexec


def build_train_parser():
    d = TrainConfig()
    p = OneLineParser(prog="mnist_cnn_attn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per step, over all processes (under mpiexec -n N, each "
                   f"takes 1/N of them; default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help=f"SGD momentum (default {d.momentum})")
    p.add_argument("--arch", default=d.arch, help="'default' (recommended) or 'seed' (the "
                   "article's sizes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", default=None, help="MNIST directory (default $MINIDL_DATA or "
                   "~/.cache/minidl)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-limit", type=int, default=None,
                   help="train on the first N images only (quick runs)")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--shift", type=int, default=d.shift,
                   help=f"random-shift augmentation in pixels (default {d.shift}, 0 = off)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and attention.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def build_predict_parser():
    p = OneLineParser(prog="mnist_cnn_attn.py predict",
                      description="Classify digit images (PNG/JPEG, any size) with a trained model.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default=DEFAULT_OUT, help="the training run's directory")
    p.add_argument("--top", type=int, default=3, help="how many classes to print")
    return p


# --------------------------------------------------------------- training

def train(argv):
    args = build_train_parser().parse_args(argv)
    config = TrainConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, momentum=args.momentum, device=args.device,
                         data_dir=args.data_dir, seed=args.seed, train_limit=args.train_limit,
                         test_limit=args.test_limit, shift=args.shift, out=args.out,
                         resume=args.resume, progress=not args.no_progress,
                         plots=not args.no_plots)
    try:
        config.validate()
    except (ValueError, minidl.backend.DeviceError) as exc:
        fail(str(exc))
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        # say so now, not after the whole training run
        fail("the plots need matplotlib: pip install -e '.[examples]' (or pass --no-plots)")
    try:
        data = load_mnist(config.data_dir, config.train_limit, config.test_limit)
        trainer = make_trainer(config, data)
    except (ValueError, FileNotFoundError, OSError, DataError,
            minidl.backend.DeviceError) as exc:
        fail(str(exc), 1)
    device = resolve_device(config.device)
    ranks = minidl.distributed.world_size()
    trainer.log(f"CNNAttention(arch={config.arch!r}): {num_parameters(trainer.model):,} "
                f"parameters, device {device}, {len(data[0]):,} training images" +
                (f", {ranks} processes of batch {config.batch_size // ranks}" if ranks > 1 else ""))
    try:
        trainer.fit()
    except (TrainingDiverged, RunLocked) as exc:
        fail(str(exc), 1)
    except OSError as exc:   # a full disk, or the output folder gone mid-run
        fail(f"cannot write the run's files to {config.out}/: {exc}", 1)
    except KeyboardInterrupt:
        sys.exit(130)
    if not trainer.is_main:
        return
    if not args.no_plots:
        plot_attention(trainer.model, data[2], data[3], os.path.join(config.out, "attention.png"))
    print(f"Wrote {config.out}/: checkpoint.safetensors, model.safetensors, metrics.json, "
          f"metrics.csv" + ("" if args.no_plots else ", curves.png, attention.png"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def attention_maps(model, images):
    """Logits, channel weights (B, C) and a spatial map (B, H, W) of what they select.

    The map is the attention-weighted sum of the feature maps: where the
    channels the attention chose respond.
    """
    model.eval()
    with minidl.no_grad():
        x = minidl.Tensor(images, device=next(model.parameters()).device)
        maps = model.feature_maps(x)
        fused, weights = model.attention(maps)   # the rest of model.forward, once
        logits = model.classifier(fused)
    w = weights.numpy()
    spatial = np.einsum("bc,bchw->bhw", w, maps.numpy())
    return logits.numpy(), w, spatial


def plot_attention(model, images, labels, path, count=16):
    plt = _pyplot()
    shown = min(len(images), 1000)   # the candidates: at most the first 1,000
    logits, _, spatial = attention_maps(model, images_to_float(images[:shown]))
    predicted = logits.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels[:shown])[: count // 4]
    right = [i for i in range(shown) if i not in set(wrong)][: count - len(wrong)]
    chosen = list(wrong) + right
    side = int(np.ceil(np.sqrt(len(chosen))))
    fig, axes = plt.subplots(side, side, figsize=(2 * side, 2.2 * side))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), chosen):
        ax.imshow(images[i], cmap="gray")
        heat = np.kron(spatial[i], np.ones((4, 4)))  # 7x7 -> 28x28
        ax.imshow(heat, cmap="jet", alpha=0.45)
        miss = predicted[i] != labels[i]
        ax.set_title(f"true {labels[i]} / pred {predicted[i]}" + (" X" if miss else ""),
                     color="red" if miss else "black", fontsize=9)
    fig.suptitle("attention-weighted feature maps over test digits (X: misclassified)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------- predicting

class NoDigitFound(ValueError):
    """The image has no ink: nothing differs from its background."""


def load_image(path):
    """Any PNG/JPEG -> float32 (1, 28, 28) in [0, 1], white digit on black.

    A light background is inverted; in an image with transparency, the opaque
    strokes are the digit (its colours are ignored: converting to grey alone
    would drop the alpha channel and leave a blank image). The digit is cropped,
    scaled to fit 20x20 and centred in 28x28, as MNIST's digits are.
    """
    import warnings
    from PIL import Image, UnidentifiedImageError
    try:
        # a header claiming a huge image (a decompression bomb) is refused, not decoded
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                alpha = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3] / 255
                if alpha.min() < 1:
                    grey = alpha
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 0.5:
        grey = 1 - grey
    ink = np.argwhere(grey > 0.2)
    if not len(ink):
        raise NoDigitFound(f"{path}: no digit found (the image is blank: nothing stands out "
                           "from its background)")
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    grey = grey[top:bottom, left:right]
    h, w = grey.shape
    scale = 20 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize(
        size, Image.Resampling.LANCZOS), dtype=np.float32) / 255
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - digit.shape[0]) // 2, (28 - digit.shape[1]) // 2
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return canvas[None]


def load_model(out):
    path = os.path.join(out, "checkpoint.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained model in {out}/ (expected {path}); train first: "
                                "python examples/mnist_cnn_attn.py")
    state = read_checkpoint(path, "predict", ("model", "config"))
    config = state["config"] if isinstance(state["config"], dict) else {}
    arch = config.get("arch", "default")
    try:
        model = CNNAttention(arch)
        model.load_state_dict(state["model"])
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit the architecture it records "
                              f"(arch {arch!r}): {str(exc).splitlines()[0]}") from None
    return model.eval()


def predict(argv):
    args = build_predict_parser().parse_args(argv)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        fail(f"image not found: {', '.join(missing)}")
    images = {}
    try:
        model = load_model(args.out)
        for path in args.images:
            try:
                images[path] = load_image(path)
            except NoDigitFound as exc:   # a warning, not a confident guess
                print(f"warning: {exc}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 1)
    if images:
        batch = Normalize(MNIST_MEAN, MNIST_STD)(np.stack(list(images.values())))
        with minidl.no_grad():
            probs = dict(zip(images, F.softmax(model(minidl.Tensor(batch)), dim=1).numpy()))
    for path in args.images:
        if path not in images:
            print(f"{path}: no digit found")
            continue
        p = probs[path]
        top = np.argsort(-p)[: max(1, min(args.top, 10))]
        print(f"{path}: " + ", ".join(f"{int(k)} ({100 * p[k]:.1f}%)" for k in top))


def build_export_parser():
    p = OneLineParser(prog="mnist_cnn_attn.py export",
                      description="Write the trained model as ONNX (input: MNIST-normalised "
                                  "(batch, 1, 28, 28) images; output: logits (batch, 10)).")
    p.add_argument("path", help="the .onnx file to write")
    p.add_argument("--out", default=DEFAULT_OUT, help="the training run's directory")
    return p


def export(argv):
    args = build_export_parser().parse_args(argv)
    from minidl.onnx import ExportError
    from minidl.onnx import export as to_onnx_file
    try:
        model = load_model(args.out)
        to_onnx_file(model, np.zeros((1, 1, 28, 28), np.float32), args.path,
                     dynamic_batch=True)
    except (FileNotFoundError, ValueError, ImportError, ExportError, OSError) as exc:
        fail(str(exc), 1)
    print(f"Wrote {args.path}: input 'input' (batch, 1, 28, 28) float32, normalised with "
          f"mean {MNIST_MEAN} and std {MNIST_STD}; output 'output' (batch, 10) logits")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "predict":
        predict(argv[1:])
    elif argv and argv[0] == "export":
        export(argv[1:])
    else:
        train(argv)


if __name__ == "__main__":
    main()
