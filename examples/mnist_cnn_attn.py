"""Train the article's CNN+Attention model on MNIST, or classify digit images.

    python examples/mnist_cnn_attn.py                       # train with the defaults
    python examples/mnist_cnn_attn.py --arch seed --epochs 3
    python examples/mnist_cnn_attn.py --resume              # continue runs/mnist_cnn_attn
    python examples/mnist_cnn_attn.py predict digit.png     # classify with the saved model

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

import numpy as np  # noqa: E402

from minidl.models import CNNAttention, num_parameters
from minidl.nn import functional as F
from minidl.data import Normalize
from minidl.train import (MNIST_MEAN, MNIST_STD, TrainConfig, TrainingDiverged, Trainer,
                          images_to_float, read_checkpoint)

DEFAULT_OUT = os.path.join("runs", "mnist_cnn_attn")


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments end in one line on stderr, not a usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message, code=2):
    print(f"mnist_cnn_attn.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def build_train_parser():
    d = TrainConfig()
    p = OneLineParser(prog="mnist_cnn_attn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per step (default {d.batch_size})")
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
                         resume=args.resume, progress=not args.no_progress)
    try:
        config.validate()
    except (ValueError, minidl.backend.DeviceError) as exc:
        fail(str(exc))
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        # say so now, not after the whole training run
        fail("the plots need matplotlib: pip install -e '.[examples]' (or pass --no-plots)")
    try:
        trainer = Trainer(config)
    except (ValueError, FileNotFoundError, OSError, minidl.backend.DeviceError) as exc:
        fail(str(exc), 1)
    print(f"CNNAttention(arch={config.arch!r}): {num_parameters(trainer.model):,} parameters, "
          f"device {trainer.device}, {len(trainer.train_x):,} training images")
    try:
        history = trainer.fit()
    except TrainingDiverged as exc:
        fail(str(exc), 1)
    except OSError as exc:   # a full disk, or the output folder gone mid-run
        fail(f"cannot write the run's files to {config.out}/: {exc}", 1)
    except KeyboardInterrupt:
        sys.exit(130)
    if not args.no_plots:
        plot_curves(history, os.path.join(config.out, "curves.png"))
        plot_attention(trainer.model, trainer.test_x, trainer.test_y,
                       os.path.join(config.out, "attention.png"))
    print(f"Wrote {config.out}/: checkpoint.safetensors, model.safetensors, metrics.json, "
          f"metrics.csv" + ("" if args.no_plots else ", curves.png, attention.png"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history, path):
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    left.plot(epochs, [h["test_loss"] for h in history], "o-", label="test loss")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend()
    right.plot(epochs, [h["train_acc"] for h in history], "o-", label="train accuracy")
    right.plot(epochs, [h["test_acc"] for h in history], "o-", label="test accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    right.legend()
    fig.suptitle("CNN+Attention on MNIST")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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

def load_image(path):
    """Any PNG/JPEG -> float32 (1, 28, 28) in [0, 1], white digit on black.

    A light background is inverted; in an image with transparency, the opaque
    strokes are the digit (its colours are ignored: converting to grey alone
    would drop the alpha channel and leave a blank image). The digit is cropped,
    scaled to fit 20x20 and centred in 28x28, as MNIST's digits are.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                alpha = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3] / 255
                if alpha.min() < 1:
                    grey = alpha
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 0.5:
        grey = 1 - grey
    ink = np.argwhere(grey > 0.2)
    if len(ink):
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
    model = CNNAttention(state["config"].get("arch", "default"))
    model.load_state_dict(state["model"])
    return model.eval()


def predict(argv):
    args = build_predict_parser().parse_args(argv)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        fail(f"image not found: {', '.join(missing)}")
    try:
        model = load_model(args.out)
        batch = Normalize(MNIST_MEAN, MNIST_STD)(np.stack([load_image(p) for p in args.images]))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 1)
    with minidl.no_grad():
        probs = F.softmax(model(minidl.Tensor(batch)), dim=1).numpy()
    for path, p in zip(args.images, probs):
        top = np.argsort(-p)[: max(1, min(args.top, 10))]
        print(f"{path}: " + ", ".join(f"{int(k)} ({100 * p[k]:.1f}%)" for k in top))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "predict":
        predict(argv[1:])
    else:
        train(argv)


if __name__ == "__main__":
    main()
