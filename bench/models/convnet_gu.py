"""Gu et al.'s enhanced ConvNet: the CapsNet's 9x9 trunk, average pooling, squash, margin loss and
class-conditional reconstruction.

Gu, Tresp & Hu, "Capsule Network is Not More Robust than Convolutional Network", CVPR 2021,
pp. 14309-14317, arXiv:2103.15459.

What we could read of the paper here: its abstract (the CVF open-access page and arXiv's) and a
secondary review of it (awesome-reviews-kaist on GitHub, a Korean paper review, whose tables are
images). The paper's body, its tables and its supplement were not reachable, so every number below
that is not from those two sources is marked.

From the paper (abstract): a CapsNet differs from a ConvNet in five components, the transformation
process, dynamic routing, the squash function, the margin loss instead of cross-entropy and the
class-conditional reconstruction loss; ablated on affine transformations, overlapping digits and
semantic representations, routing and the transformation process can harm robustness and the other
three help; "enhanced ConvNets" that add the helpful components are more robust than the CapsNet.

From the review (not checked against the paper): the final model is a simple three-layer ConvNet
with 9x9 kernels and average pooling, 5.3M parameters, that beats the CapsNet on affNIST by a wide
margin; kernel size matters most (the CapsNet's 9x9 against the 5x5 of Sabour et al.'s baseline).
The paper's own affNIST accuracy for it: NOT reachable here (not reported in this suite).

Our reading (marked as such): the CapsNet's two 9x9 convolutions (256 channels, the second with
stride 2) have 20,992 + 5,308,672 = 5,329,664 parameters, which is the reported 5.3M, so the three
layers are those two convolutions and one linear layer after a global average pool. Our choices
where the paper is silent (or unread):

- conv 9x9 (256) ReLU -> conv 9x9 (256, stride 2) ReLU -> global average pool -> FC 160, read as
  10 class vectors of 16D (the DigitCaps' size) -> squash (Sabour et al., Eq. 1) -> lengths are
  the class scores;
- margin loss (Eq. 4: m+ 0.9, m- 0.1, lambda 0.5) on the lengths;
- the CapsNet's decoder (FC 512, FC 1024, FC H*W sigmoid) on the class vectors masked by the label
  (by the longest vector at test time), weighted 0.0005 as in the CapsNet;
- He initialisation and zero biases (every ConvNet here), no dropout.

Parameters at 28x28, width 1: 5,370,784 without the decoder (the reported 5.3M), 6,782,128 with
it; ``python -m bench models`` lists both. ``width`` scales the two convolutions' channels as in
the CapsNet; the 160-D class layer and the decoder stay.
"""

from __future__ import annotations

from bench.models.convnet_k9 import ConvNetK9
from bench.models.registry import register_model

__all__ = ["PAPER_PARAMS_GU"]

PAPER_PARAMS_GU = "5.3M"  # the review's count of Gu et al.'s final ConvNet (see the docstring)


@register_model("convnet-gu", family="convnet")
def convnet_gu(*, input_size: int, width: float) -> ConvNetK9:
    """Gu et al.'s enhanced ConvNet: 9x9 trunk, global average pool, squash, margin loss, recon."""
    return ConvNetK9(input_size=input_size, width=width, pool="avg", head="squash", loss="margin",
                     reconstruction=True)
