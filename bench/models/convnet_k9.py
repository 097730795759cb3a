"""A ConvNet with the CapsNet's 9x9 kernels and no pooling: the control of Gu, Tresp & Hu.

Gu, Tresp & Hu, "Capsule Network is Not More Robust than Convolutional Network", CVPR 2021,
arXiv:2103.15459. They start from the CapsNet and remove its special parts one at a time (the
transformation matrices, dynamic routing, squash, margin loss, reconstruction) and find that the
kernel size, not routing, explains most of the affNIST robustness the CapsNet was credited with:
the CapsNet's 9x9 kernels against the paper's baseline's 5x5. Their final "simple ConvNet" with
9x9 kernels (and average pooling, 5.3M parameters) beats the CapsNet on affNIST. Our choice: the
layer list below is their CapsNet-derived baseline (the CapsNet with its capsule layers replaced),
not the final "simple ConvNet" of their table.

This control keeps the CapsNet's feature extractor exactly and replaces PrimaryCaps -> DigitCaps
routing by fully connected layers:

    conv 9x9 (256, stride 1) ReLU -> conv 9x9 (256, stride 2) ReLU -> FC 160 ReLU -> FC 10

with no max-pooling, so any difference against "capsnet" is the capsule layer and its losses. The
160-D penultimate layer mirrors the 10 x 16D DigitCaps and is the ``features`` output. At 28x28 it
has 6,805,994 parameters (the CapsNet has 6,804,224 without its decoder). ``width`` scales the
two convolutions' channels like the CapsNet's; the 160-D layer stays.
"""

from __future__ import annotations

from torch import nn

from bench.models.baseline_cnn import ConvClassifier
from bench.models.registry import NUM_CLASSES, register_model, scaled

__all__ = ["ConvNetK9"]

DIGIT_DIM = 16  # DigitCaps dimension: the penultimate layer has 10 x 16 = 160 units


class ConvNetK9(ConvClassifier):
    def __init__(self, input_size: int = 40, width: float = 1.0):
        c1, c2 = scaled(256, width), scaled(256, width)
        grid = ((input_size - 8) - 9) // 2 + 1
        body = nn.Sequential(
            nn.Conv2d(1, c1, 9),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 9, stride=2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(c2 * grid * grid, NUM_CLASSES * DIGIT_DIM),
            nn.ReLU(inplace=True),
        )
        super().__init__(body, feature_dim=NUM_CLASSES * DIGIT_DIM)


@register_model("convnet-k9", family="convnet")
def convnet_k9(*, input_size: int, width: float) -> ConvNetK9:
    """Gu et al.'s control: the CapsNet's 9x9 convolutions, FC 160, no pooling."""
    return ConvNetK9(input_size=input_size, width=width)
