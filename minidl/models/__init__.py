"""Ready-made models."""
from .cnn_attention import ARCHS, CNNAttention, num_parameters
from .detector import CenterNetTargets, CNNAttentionDetector, detection_loss

__all__ = ["ARCHS", "CNNAttention", "num_parameters",
           "CNNAttentionDetector", "CenterNetTargets", "detection_loss"]
