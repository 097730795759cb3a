"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge, "Efficient-CapsNet: Capsule Network with
Self-Attention Routing", Scientific Reports 11, 14634 (2021), arXiv:2101.12491), the MNIST model.

Layers, as in the authors' released code (EscVM/Efficient-CapsNet,
models/efficient_capsnet_graph_mnist.py), at width 1:

- Conv 5x5 (32) ReLU BN -> Conv 3x3 (64) ReLU BN -> Conv 3x3 (64) ReLU BN -> Conv 3x3 (128,
  stride 2) ReLU BN, all "valid" (no padding); batch normalisation after the ReLU, as released.
  28x28 -> 24 -> 22 -> 20 -> 9x9.
- PrimaryCaps: a depthwise convolution (one 9x9 filter per channel, with bias, linear) that
  reduces the 9x9 map to 1x1; its 128 outputs are 16 capsules of 8D, squashed with
  :func:`efficient_squash` (utils/layers.py, PrimaryCaps).
- FCCaps: 10 capsules of 16D; a matrix W_ij (8x16) per (primary capsule i, class j) and log priors
  b_ij, routed by :func:`self_attention_routing` (utils/layers.py, FCCaps).
- Decoder (released ``generator_graph``): the 10 x 16 class capsules with all but one masked to
  zero (the true class while training, the longest otherwise) -> FC 512 ReLU -> FC 1024 ReLU ->
  FC H*W sigmoid.
- Loss: margin loss (Sabour et al. 2017, Eq. 4; the released utils/tools.py ``marginLoss`` sums it
  over classes and averages over the batch, as :func:`margin_loss`) plus 0.392 x the mean squared
  reconstruction error per pixel (config.json ``lmd_gen`` = 0.392 with Keras' "mse"). As in
  :class:`~bench.models.capsnet.CapsNet`, ``recon_weight`` weights the per-image SUM of squared
  errors (so that ``[model] recon_weight`` means the same for both models): 0.392 / (H*W), which
  at 28x28 is 0.0005, the CapsNet paper's weight.

At 28x28 and width 1 it has 161,824 parameters without the decoder (the paper's "161K"; in the
released Keras model that is the trainable count, the batch-norm running statistics being buffers
here) and 1,573,168 with it.

Initialisation follows the released code's Keras initialisers: ``he_normal`` (a normal truncated at
2 std, std sqrt(2 / fan_in) / 0.8796) for the convolutions, W and the decoder's hidden layers,
``glorot_normal`` for its output layer, ``glorot_uniform`` for the depthwise convolution, zero biases
and priors. Keras computes W's fan_in (shape (10, 16, 8, 16)) as 10 x 16 x 8 = 1280.

Choices of ours: ``width`` scales the four convolutions' channels (the number of primary capsules is
channels / 8; the capsule dimensions and the decoder stay); at input sizes other than 28 the
depthwise kernel is the size of the last feature map (15 at 40x40), so that it still reduces it to
1x1 as at 28x28.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.capsnet import margin_loss, reconstruction_decoder
from bench.models.registry import NUM_CLASSES, Output, register_model, scaled
from bench.models.routing import efficient_squash, float32_routing, self_attention_routing

__all__ = ["RECON_WEIGHT_PER_PIXEL", "EfficientCapsNet"]

RECON_WEIGHT_PER_PIXEL = 0.392  # config.json lmd_gen, times the per-pixel mean squared error
PRIMARY_DIM = 8
CLASS_DIM = 16
_TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated at +-2 (Keras' correction)


def _keras_truncated_normal(t: torch.Tensor, std: float) -> None:
    """Keras' he_normal/glorot_normal: a normal truncated at 2 std, rescaled to have std ``std``."""
    s = std / _TRUNC_STD
    nn.init.trunc_normal_(t, std=s, a=-2.0 * s, b=2.0 * s)


class EfficientCapsNet(nn.Module):
    """Efficient-CapsNet for MNIST; ``forward(x, y=None)`` returns an :class:`Output` whose logits and
    scores are the 10 class-capsule lengths and whose features are the longest capsule's 16D pose."""

    def __init__(
        self, input_size: int = 28, width: float = 1.0, reconstruction: bool = True,
        recon_weight: float | None = None,
    ):
        super().__init__()
        if recon_weight is None:  # the released weight, on the per-image sum of squared errors
            recon_weight = RECON_WEIGHT_PER_PIXEL / (input_size * input_size)
        if recon_weight < 0:
            raise ValueError(f"recon_weight must be >= 0, got {recon_weight}")
        c1, c2, c3, c4 = (scaled(c, width) for c in (32, 64, 64, 128))
        self.num_primary = max(1, c4 // PRIMARY_DIM)
        c4 = self.num_primary * PRIMARY_DIM
        grid = (input_size - 4 - 2 - 2 - 3) // 2 + 1
        if grid < 1:
            raise ValueError(f"input_size {input_size} too small for Efficient-CapsNet")
        self.input_size = input_size
        self.recon_weight = recon_weight
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 5), nn.ReLU(inplace=True), nn.BatchNorm2d(c1),
            nn.Conv2d(c1, c2, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(c2),
            nn.Conv2d(c2, c3, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(c3),
            nn.Conv2d(c3, c4, 3, stride=2), nn.ReLU(inplace=True), nn.BatchNorm2d(c4),
        )
        self.primary = nn.Conv2d(c4, c4, grid, groups=c4)  # depthwise, reduces the map to 1x1
        # W_ij (8x16) per (class j, primary capsule i), stored 3-D (j, i, 8 * 16) so that
        # channels_last conversion leaves it alone.
        self.W = nn.Parameter(torch.empty(NUM_CLASSES, self.num_primary, PRIMARY_DIM * CLASS_DIM))
        self.log_priors = nn.Parameter(torch.zeros(NUM_CLASSES, self.num_primary))
        self.decoder = (
            reconstruction_decoder(NUM_CLASSES * CLASS_DIM, input_size * input_size)
            if reconstruction
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The released code's Keras initialisers (see the module docstring)."""
        for m in self.convs:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                _keras_truncated_normal(m.weight, math.sqrt(2.0 / fan_in))
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.primary.weight)
        nn.init.zeros_(self.primary.bias)
        _keras_truncated_normal(self.W, math.sqrt(2.0 / (NUM_CLASSES * self.num_primary * PRIMARY_DIM)))
        nn.init.zeros_(self.log_priors)
        if self.decoder is not None:
            linears = [m for m in self.decoder if isinstance(m, nn.Linear)]
            for lin in linears[:-1]:
                _keras_truncated_normal(lin.weight, math.sqrt(2.0 / lin.in_features))
            out = linears[-1]
            _keras_truncated_normal(out.weight, math.sqrt(2.0 / (out.in_features + out.out_features)))
            for lin in linears:
                nn.init.zeros_(lin.bias)

    def class_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> the ``(B, 10, 16)`` class capsules."""
        p = self.primary(self.convs(x))  # (B, 8 * N, 1, 1), channels grouped (capsule, atom)
        u = efficient_squash(p.reshape(p.shape[0], self.num_primary, PRIMARY_DIM))  # (B, N, 8)
        w = self.W.view(NUM_CLASSES, self.num_primary, PRIMARY_DIM, CLASS_DIM)
        u_hat = torch.einsum("bid,jide->bjie", u, w)  # (B, 10, N, 16)
        with float32_routing(x.device):
            v, _ = self_attention_routing(u_hat.float(), self.log_priors.float())
        return v

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Output:
        v = self.class_capsules(x)
        lengths = torch.linalg.vector_norm(v, dim=-1)
        pred = lengths.argmax(dim=1)
        rows = torch.arange(v.shape[0], device=v.device)
        recon = None
        if self.decoder is not None:
            target = y if y is not None else pred
            mask = F.one_hot(target, NUM_CLASSES).to(v.dtype).unsqueeze(-1)
            recon = self.decoder((v * mask).flatten(1))
        return Output(logits=lengths, scores=lengths, features=v[rows, pred], reconstruction=recon)

    def loss(self, out: Output, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Margin loss + recon_weight x the per-image sum of squared reconstruction errors (batch
        means); by default 0.392 x the per-pixel mean, as released."""
        loss = margin_loss(out.logits.float(), y)
        if out.reconstruction is not None:
            err = (out.reconstruction.float() - x.flatten(1).float()).pow(2).sum(dim=1).mean()
            loss = loss + self.recon_weight * err
        return loss


@register_model("efficient-capsnet", family="capsule")
def efficient_capsnet(*, input_size: int, width: float) -> EfficientCapsNet:
    """The paper's MNIST model with its reconstruction decoder (161,824 + 1,411,344 parameters)."""
    return EfficientCapsNet(input_size=input_size, width=width, reconstruction=True)


@register_model("efficient-capsnet-norecon", family="capsule")
def efficient_capsnet_norecon(*, input_size: int, width: float) -> EfficientCapsNet:
    """Without the decoder: margin loss only."""
    return EfficientCapsNet(input_size=input_size, width=width, reconstruction=False)
