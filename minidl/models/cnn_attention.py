"""The CNN+Attention model of the article behind minidl, made to work.

The article's network: conv 3x3 -> ReLU -> maxpool 2x2, twice; an attention
network fuses the feature maps; a fully connected layer classifies. Its
published code does not run (see the README, "How this differs from the
article"); this is what it describes.

Notation: B batch, C channels, H x W the feature map after the CNN (7 x 7 for
28 x 28 inputs: padding 1 keeps each conv's size, each pool halves it).

Architectures (``arch``):

* ``"seed"`` - the article's sizes: 1 -> 8 -> 16 channels, so C*H*W = 784,
  the input size of its attention MLP (784 -> 128 -> 64, dropout 0.2); the
  MLP scores each of the 16 channels, a softmax across channels weights
  them, and a linear layer classifies the reweighted maps.
* ``"default"`` - what we recommend: 1 -> 16 -> 32 channels, the same
  channel attention over 32 channels, and a hidden layer of 128 before the
  classifier. About 0.4 M parameters.
"""
from __future__ import annotations

from .. import nn

ARCHS = {
    # channels of the two convs, attention MLP sizes, classifier hidden size (0 = none)
    "seed": dict(channels=(8, 16), attention_hidden=(128, 64), classifier_hidden=0),
    "default": dict(channels=(16, 32), attention_hidden=(128, 64), classifier_hidden=128),
}


class CNNAttention(nn.Module):
    """CNN feature extractor + channel attention + fully connected classifier.

    Input (B, 1, 28, 28) float32 images; returns logits (B, num_classes).
    ``forward(x, return_attention=True)`` also returns the attention weights
    (B, C): how much each feature map counts for this image.
    """

    def __init__(self, arch: str = "default", num_classes: int = 10, image_size: int = 28,
                 in_channels: int = 1, dropout: float = 0.2, fusion: str = "reweight"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"CNNAttention: unknown arch {arch!r}; expected one of "
                             f"{sorted(ARCHS)}")
        if image_size % 4:
            raise ValueError(f"CNNAttention: image_size must be a multiple of 4 (two 2x2 "
                             f"pools), got {image_size}")
        spec = ARCHS[arch]
        c1, c2 = spec["channels"]
        self.arch = arch
        self.in_channels, self.image_size = in_channels, image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.attention = nn.ChannelAttention(c2, side, side, hidden=spec["attention_hidden"],
                                             dropout=dropout, fusion=fusion)
        fused = c2 * side * side if fusion == "reweight" else side * side
        hidden = spec["classifier_hidden"]
        if hidden:
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(fused, hidden), nn.ReLU(),
                                            nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        else:
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(fused, num_classes))

    def forward(self, x, return_attention: bool = False):
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"CNNAttention: expected input (B, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}), got {tuple(x.shape)}")
        maps = self.feature_maps(x)
        fused, weights = self.attention(maps)
        logits = self.classifier(fused)
        return (logits, weights) if return_attention else logits

    def feature_maps(self, x):
        """The CNN: (conv -> ReLU -> maxpool 2x2) twice; (B, 1, 28, 28) -> (B, C, 7, 7)."""
        return self.features(x)


def num_parameters(model: nn.Module) -> int:
    return sum(p._data.size for p in model.parameters())
