"""Detect MNIST digits on canvases with the article's CNN+Attention detector.

    python examples/mnist_detect.py                        # train with the defaults, then evaluate
    python examples/mnist_detect.py --no-attention         # the ablation: centre features only
    python examples/mnist_detect.py --resume               # continue runs/mnist_detect
    python examples/mnist_detect.py predict canvas.png     # boxes as JSON

Training writes to --out: checkpoint.safetensors, model.safetensors,
metrics.json/.csv (the last row holds the test set's COCO mAP: map50, map),
curves.png, detections.png (test canvases: predictions beside the truth) and
attention.png (where each object's attention looked).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys

try:   # before NumPy: minidl sets BLAS thread settings that NumPy reads when it loads
    import minidl
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import minidl

import numpy as np  # noqa: E402

from minidl import optim  # noqa: E402
from minidl.data import (DataLoader, MNISTDetection, ToFloat, coco_detections,  # noqa: E402
                         coco_map)
from minidl.models import (CenterNetTargets, CNNAttentionDetector,  # noqa: E402
                           detection_loss, num_parameters)
from minidl.train import (Trainer, TrainingDiverged, read_checkpoint,  # noqa: E402
                          resolve_device)

DEFAULT_OUT = os.path.join("runs", "mnist_detect")
PROG = "mnist_detect.py"


@dataclasses.dataclass
class DetectConfig:
    """The detector's recipe: Adam with a cosine schedule stepped per batch,
    canvases drawn anew every epoch."""
    epochs: int = 12
    train_size: int = 8000            # canvases per epoch
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    attention: bool = True            # False: the ablation (plain centre features)
    canvas_size: int = 64
    test_size: int = 2000
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    out: str = DEFAULT_OUT
    resume: bool = False
    progress: bool = True
    plots: bool = False
    peaks: int = 10                   # heatmap peaks decoded per canvas
    eval_batch_size: int = 200

    RUN_SETTINGS = ("epochs", "train_size", "batch_size", "lr", "weight_decay", "attention",
                    "canvas_size", "seed")

    def validate(self):
        for name in ("epochs", "train_size", "batch_size", "test_size", "peaks",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got "
                                 f"{getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"learning rate must be positive and finite, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight decay must be non-negative and finite, got "
                             f"{self.weight_decay}")
        if self.canvas_size < 40 or self.canvas_size % CNNAttentionDetector.STRIDE:
            raise ValueError(f"canvas size must be a multiple of {CNNAttentionDetector.STRIDE} "
                             f"and at least 40 (a digit scaled 1.4x is 39 px), got "
                             f"{self.canvas_size}")
        resolve_device(self.device)


def load_digits(config):
    """(train images, train labels, test images, test labels) of MNIST."""
    from minidl.data import MNIST
    train = MNIST(root=config.data_dir, train=True)
    test = MNIST(root=config.data_dir, train=False)
    return train.images, train.labels, test.images, test.labels


def test_set(config, digits):
    return MNISTDetection(train=False, size=config.test_size, seed=0,
                          canvas_size=config.canvas_size, images=digits[2], labels=digits[3])


def evaluate(model, dataset, config, device):
    """COCO mAP of ``model`` on ``dataset`` (pycocotools): {"map50", "map"}."""
    results = []
    for start in range(0, len(dataset), config.eval_batch_size):
        index = np.arange(start, min(start + config.eval_batch_size, len(dataset)))
        images, _ = dataset.__getitems__(index)
        x = minidl.Tensor(ToFloat()(images), device=device)
        for i, (boxes, labels, scores) in zip(index, model.detect(x, k=config.peaks)):
            results += coco_detections([i + 1], [boxes], [labels], [scores])
    return coco_map(dataset.to_coco(), results)


def make_trainer(config: DetectConfig, digits=None, log=print):
    """The framework's Trainer set up with this recipe; ``digits`` as
    :func:`load_digits` returns them (loaded when None)."""
    config.validate()
    device = resolve_device(config.device)
    minidl.manual_seed(config.seed)
    digits = digits if digits is not None else load_digits(config)
    train = MNISTDetection(train=True, size=config.train_size, canvas_size=config.canvas_size,
                           images=digits[0], labels=digits[1], transform=ToFloat(),
                           target_transform=CenterNetTargets(config.canvas_size))
    test = test_set(config, digits)
    model = CNNAttentionDetector(attention=config.attention).to(device)
    optimizer = optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, device=device,
                        prefetch=True)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                     T_max=config.epochs * len(loader))

    def epoch_line(row):
        parts = ", ".join(f"{k[len('train_'):]} {v:.4f}" for k, v in row.items()
                          if k.startswith("train_") and k != "train_loss")
        return "Epoch: {} \tTraining Loss: {:.6f} ({})".format(row["epoch"], row["train_loss"],
                                                              parts)

    return Trainer(
        model, optimizer, detection_loss, loader, epochs=config.epochs, out=config.out,
        scheduler=scheduler, forward=lambda m, x, t: m(x, t["index"]),
        evaluate=lambda m: evaluate(m, test, config, device), eval_every=config.epochs,
        settings={key: getattr(config, key) for key in config.RUN_SETTINGS},
        resume=config.resume, progress=config.progress, plots=config.plots,
        title="CNN+Attention detector on MNIST canvases", log=log, epoch_line=epoch_line,
        final_line=lambda h: "mAP@0.5: {:.3f}  mAP@[.5:.95]: {:.3f}".format(
            h[-1].get("map50", float("nan")), h[-1].get("map", float("nan"))))


# --------------------------------------------------------------------- CLI

class OneLineParser(argparse.ArgumentParser):
    """Bad arguments end in one line on stderr, not a usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message, code=2):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def build_train_parser():
    d = DetectConfig()
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--train-size", type=int, default=d.train_size,
                   help=f"canvases per epoch, drawn anew each epoch (default {d.train_size})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam's peak lr (default {d.lr})")
    p.add_argument("--no-attention", action="store_true",
                   help="the ablation: heads see the centre's features, no attention stage")
    p.add_argument("--test-size", type=int, default=d.test_size,
                   help=f"test canvases (default {d.test_size})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", default=None, help="MNIST directory (default $MINIDL_DATA or "
                   "~/.cache/minidl)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--no-plots", action="store_true",
                   help="skip curves.png, detections.png and attention.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def build_predict_parser():
    p = OneLineParser(prog=f"{PROG} predict",
                      description="Detect digits on canvases (PNG/JPEG) with a trained model; "
                                  "prints JSON.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default=DEFAULT_OUT, help="the training run's directory")
    p.add_argument("--threshold", type=float, default=0.3, help="lowest score printed")
    return p


def train(argv):
    args = build_train_parser().parse_args(argv)
    config = DetectConfig(epochs=args.epochs, train_size=args.train_size,
                          batch_size=args.batch_size, lr=args.lr,
                          attention=not args.no_attention, test_size=args.test_size,
                          device=args.device, data_dir=args.data_dir, seed=args.seed,
                          out=args.out, resume=args.resume, progress=not args.no_progress,
                          plots=not args.no_plots)
    try:
        config.validate()
    except (ValueError, minidl.backend.DeviceError) as exc:
        fail(str(exc))
    if importlib.util.find_spec("pycocotools") is None:
        fail("the evaluation needs pycocotools: pip install -e '.[examples]'")
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        fail("the plots need matplotlib: pip install -e '.[examples]' (or pass --no-plots)")
    try:
        digits = load_digits(config)
        trainer = make_trainer(config, digits)
    except (ValueError, FileNotFoundError, OSError, minidl.backend.DeviceError) as exc:
        fail(str(exc), 1)
    print(f"CNNAttentionDetector(attention={config.attention}): "
          f"{num_parameters(trainer.model):,} parameters, device {resolve_device(config.device)}, "
          f"{config.train_size:,} new canvases per epoch, {config.test_size:,} test canvases")
    try:
        trainer.fit()
    except TrainingDiverged as exc:
        fail(str(exc), 1)
    except OSError as exc:   # a full disk, or the output folder gone mid-run
        fail(f"cannot write the run's files to {config.out}/: {exc}", 1)
    except KeyboardInterrupt:
        sys.exit(130)
    if not args.no_plots:
        test = test_set(config, digits)
        plot_detections(trainer.model, test, os.path.join(config.out, "detections.png"))
        plot_attention(trainer.model, test, os.path.join(config.out, "attention.png"))
    print(f"Wrote {config.out}/: checkpoint.safetensors, model.safetensors, metrics.json, "
          f"metrics.csv" + ("" if args.no_plots else
                            ", curves.png, detections.png, attention.png"))


# ------------------------------------------------------------------ figures

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _draw_box(ax, box, text, color):
    from matplotlib.patches import Rectangle
    x0, y0, x1, y1 = box
    # pixel edges -> imshow's coordinates (pixel centres at integers)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=color,
                           linewidth=1.2))
    ax.text(x0 - 0.5, y0 - 1.5, text, color=color, fontsize=7)


def plot_detections(model, dataset, path, count=8, threshold=0.3):
    plt = _pyplot()
    images, targets = dataset.__getitems__(np.arange(count))
    device = next(model.parameters()).device
    found = model.detect(minidl.Tensor(ToFloat()(images), device=device))
    fig, axes = plt.subplots(2, count, figsize=(2 * count, 4.4))
    for i in range(count):
        for row, title in ((0, "predicted"), (1, "truth")):
            ax = axes[row, i]
            ax.imshow(images[i], cmap="gray")
            ax.axis("off")
            ax.set_title(title, fontsize=8)
        boxes, labels, scores = found[i]
        for box, label, score in zip(boxes, labels, scores):
            if score >= threshold:
                _draw_box(axes[0, i], box, f"{label} {score:.2f}", "lime")
        for box, label in zip(targets["boxes"][i], targets["labels"][i]):
            if label >= 0:
                _draw_box(axes[1, i], box, str(label), "orange")
    fig.suptitle(f"test canvases: detections (score >= {threshold}) above, ground truth below")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_attention(model, dataset, path, count=6):
    """Each object's attention weights over the feature map, upsampled onto the canvas."""
    plt = _pyplot()
    images, targets = dataset.__getitems__(np.arange(count))
    encode = CenterNetTargets(dataset.canvas_size)(targets)
    device = next(model.parameters()).device
    model.eval()
    with minidl.no_grad():
        out = model(minidl.Tensor(ToFloat()(images), device=device),
                    minidl.Tensor(encode["index"], device=device))
    if out["attention"] is None:
        return   # the ablation has no attention to draw
    weights = out["attention"].numpy()                         # (B, K, P)
    index, inside = model.attend.neighbourhood(encode["index"], *out["heatmap"].shape[2:])
    side = dataset.canvas_size // model.STRIDE
    objects = [(b, k) for b in range(count) for k in range(encode["mask"].shape[1])
               if encode["mask"][b, k]][:12]
    cols = 6
    rows = -(-len(objects) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (b, k) in zip(axes.ravel(), objects):
        heat = np.zeros(side * side)
        np.add.at(heat, index[b, k][inside[b, k]], weights[b, k][inside[b, k]])
        ax.imshow(images[b], cmap="gray")
        ax.imshow(np.kron(heat.reshape(side, side), np.ones((model.STRIDE, model.STRIDE))),
                  cmap="jet", alpha=0.45)
        _draw_box(ax, targets["boxes"][b, k], str(targets["labels"][b, k]), "white")
    fig.suptitle("where each digit's query attended (7x7 cells around its centre)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- predicting

def load_canvas(path, size):
    """Any PNG/JPEG -> (uint8 (size, size) white ink on black, scale to the file's pixels).

    A light background is inverted; a non-square image is padded to a square
    with the background; then scaled to ``size``."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 127:
        grey = 255 - grey
    h, w = grey.shape
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    square[:h, :w] = grey
    if side != size:
        square = np.asarray(Image.fromarray(square).resize((size, size),
                                                           Image.Resampling.BILINEAR))
    return square, side / size


def load_model(out):
    path = os.path.join(out, "checkpoint.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained model in {out}/ (expected {path}); train first: "
                                f"python examples/{PROG}")
    state = read_checkpoint(path, "predict", ("model", "config"))
    settings = state["config"]
    if "canvas_size" not in settings:
        raise ValueError(f"predict: {path} is not a checkpoint of {PROG} (it holds no "
                         "canvas_size; is it the classifier's?)")
    model = CNNAttentionDetector(attention=bool(settings.get("attention", True)))
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"predict: {path} does not hold this detector's weights: {exc}") \
            from None
    return model.eval(), int(settings["canvas_size"])


def predict(argv):
    args = build_predict_parser().parse_args(argv)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        fail(f"image not found: {', '.join(missing)}")
    if not 0 <= args.threshold <= 1:
        fail(f"threshold must be in [0, 1], got {args.threshold}")
    try:
        model, size = load_model(args.out)
        canvases = [load_canvas(p, size) for p in args.images]
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 1)
    x = minidl.Tensor(ToFloat()(np.stack([c for c, _ in canvases])))
    found = model.detect(x, threshold=args.threshold)
    result = {}
    for path, (_, scale), (boxes, labels, scores) in zip(args.images, canvases, found):
        result[path] = [{"label": int(c), "score": round(float(s), 4),
                         "box": [round(float(v) * scale, 1) for v in b]}
                        for b, c, s in zip(boxes, labels, scores)]
    print(json.dumps(result, indent=2))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "predict":
        predict(argv[1:])
    else:
        train(argv)


if __name__ == "__main__":
    main()
