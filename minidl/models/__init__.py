"""Ready-made models."""
from .cnn_attention import ARCHS, CNNAttention, num_parameters

__all__ = ["ARCHS", "CNNAttention", "num_parameters"]
