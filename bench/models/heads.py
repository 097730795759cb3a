"""Routing against pooling on one shared backbone: the same features, seven classification heads.

The comparison of the heads of Hahn, Pyeon & Kim ("Self-Routing Capsule Networks", NeurIPS 2019;
their code coder3000/SR-CapsNet compares avg, max, fc, dynamic-, EM- and self-routing heads on one
backbone), with the self-attention routing of Efficient-CapsNet added. Every head sits on the same
:class:`Backbone` (same layers, same initialisation), so any difference between two heads is the
head.

Backbone (our choice: small, with batch normalisation as in SR-CapsNet's and Efficient-CapsNet's
convolutional stems, and a stride-4 output so that the capsule heads route a few hundred
children): conv 5x5 (64, pad 2) BN ReLU -> conv 3x3 (128, stride 2, pad 1) BN ReLU -> conv 3x3
(128, stride 2, pad 1) BN ReLU -> two conv 3x3 (128, pad 1) BN ReLU, at width 1. It maps 28x28 to a
7x7 grid and 40x40 to 10x10 grid; ``width`` scales its channels. Each grid cell sees 27x27 pixels,
a whole MNIST digit (20x20 in its 28x28 image). Without the last two convolutions (11x11 pixels,
a stroke) the global-pooling heads reached only 55-88 % clean accuracy at n = 3,000 after 600 steps
(width 1/4, learning rate 1e-3 or 3e-3, one seed); with them 96-97 % (3e-3).

Heads (``head-*``):

- ``maxpool`` / ``avgpool``: global max / average pool -> linear -> softmax, cross-entropy.
- ``fc``: flatten -> linear -> softmax, cross-entropy.
- Capsule heads, all with the same primary capsules and transformations (our choice, so that only
  the routing differs): a 1x1 convolution (written as a linear layer over each position's
  channels) gives P = scaled(16, width) capsule types at every grid position, each a 4x4 pose
  matrix M_i (and, for EM and self-routing, an activation a_i = sigmoid(linear)); a 4x4 matrix
  W_tj per capsule type t and class j, shared over positions as in the class capsules of Hinton
  et al. 2018, gives the votes M_i W_tj (all but self-routing, whose class layer needs no votes).
  Children are ordered (type, position), type-major.

  - ``dynamic``: squashed primary poses, 3 iterations of :func:`dynamic_routing`, lengths as
    scores, margin loss (Sabour et al. 2017, Eq. 4).
  - ``em``: :func:`em_routing` (3 iterations) with coordinate addition (Hinton et al. 2018: the
    scaled (row, column) of each capsule's position is added to the first two entries of the
    right-hand column of its votes; our choice: the scale is (index + 0.5) / grid), activations as
    scores, spread loss (:func:`spread_loss`) with the margin growing linearly from 0.2 to 0.9 as
    in that paper; our choice: over the first :data:`MARGIN_RAMP_STEPS` training steps, counted by
    the model in a buffer because the loss does not see the step.
  - ``self``: :func:`self_routing` with one routing network per capsule type (weights shared over
    positions, zero-initialised as in coder3000/SR-CapsNet, modules.py); the class activations sum
    to 1 and are the scores; loss: cross-entropy on log a_j (SR-CapsNet's models/smallnet.py takes
    ``a.log()`` as the network output). Like SR-CapsNet's final layer it computes no class poses
    from W; ``features`` is the routing-weighted mean of the primary poses for the winning class.
  - ``attention``: Efficient-CapsNet's primary squash and :func:`self_attention_routing`, with log
    priors b per (class, capsule type) shared over positions (our choice; the paper has one per
    child), lengths as scores, margin loss.

No head has a reconstruction decoder. :func:`head_parameter_table` reports every head's parameters;
the pooling heads have far fewer than the capsule heads and the fc head's count grows with the grid,
so the heads are NOT matched in parameters: total parameters at 28x28, width 1 differ from
``head-dynamic``'s by up to :data:`PARAM_TOLERANCE` (checked in tests/models/test_heads.py, which prints
the table; measured: pooling heads -6.2 %, fc +4.9 %); the capsule heads are within 3% of each
other. At 40x40 the fc head has 16.7 % more than ``head-dynamic`` (the flattened 10x10 grid),
outside the tolerance: a stated mismatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.capsnet import margin_loss, squash
from bench.models.registry import NUM_CLASSES, Output, count_parameters, create_model, register_model, scaled
from bench.models.routing import (
    dynamic_routing,
    efficient_squash,
    em_routing,
    float32_routing,
    self_attention_routing,
    self_routing,
)

__all__ = [
    "HEADS",
    "MARGIN_RAMP_STEPS",
    "PARAM_TOLERANCE",
    "Backbone",
    "CapsuleHeadNet",
    "PoolingHeadNet",
    "head_parameter_table",
    "spread_loss",
]

HEADS = ("maxpool", "avgpool", "fc", "dynamic", "em", "self", "attention")
MARGIN_RAMP_STEPS = 500  # our choice: the spread-loss margin reaches 0.9 after 500 steps
PARAM_TOLERANCE = 0.15  # largest |total - head-dynamic's total| / head-dynamic's at 28x28, width 1
ITERATIONS = 3  # dynamic and EM routing: the 3 iterations of both papers
POSE = 4  # 4x4 pose matrices (Hinton et al. 2018)
PRIMARY_TYPES = 16  # at width 1, as coder3000/SR-CapsNet's SmallNet (num_caps = 16)


class Backbone(nn.Module):
    """conv5x5(c1) -> conv3x3/2(c2) -> conv3x3/2(c2) -> 2 x conv3x3(c2), each with BN and ReLU;
    ``(B, c2, g, g)``."""

    def __init__(self, input_size: int, width: float):
        super().__init__()
        c1, c2 = scaled(64, width), scaled(128, width)
        self.channels = c2
        self.grid = ((input_size + 1) // 2 + 1) // 2  # two stride-2 3x3 convs with padding 1
        layers: list[nn.Module] = []
        for c_in, c_out, k, stride in [(1, c1, 5, 1), (c1, c2, 3, 2), (c2, c2, 3, 2),
                                       (c2, c2, 3, 1), (c2, c2, 3, 1)]:
            layers += [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        for m in self.layers.modules():  # He initialisation for the ReLU stack, as ConvClassifier
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PoolingHeadNet(nn.Module):
    """Backbone -> global max pool / global average pool / flatten -> linear -> softmax."""

    def __init__(self, kind: str, input_size: int = 40, width: float = 1.0):
        super().__init__()
        if kind not in ("maxpool", "avgpool", "fc"):
            raise ValueError(f"unknown pooling head '{kind}'")
        self.kind = kind
        self.backbone = Backbone(input_size, width)
        c, g = self.backbone.channels, self.backbone.grid
        self.classifier = nn.Linear(c * g * g if kind == "fc" else c, NUM_CLASSES)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Output:
        h = self.backbone(x)
        if self.kind == "maxpool":
            features = h.amax(dim=(2, 3))
        elif self.kind == "avgpool":
            features = h.mean(dim=(2, 3))
        else:
            features = h.flatten(1)
        logits = self.classifier(features)
        return Output(logits=logits, scores=torch.softmax(logits.float(), dim=1), features=features,
                      reconstruction=None)

    def loss(self, out: Output, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (batch mean)."""
        return F.cross_entropy(out.logits.float(), y)


def spread_loss(a: torch.Tensor, y: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """Spread loss (Hinton et al. 2018): L = sum_{i != t} max(0, m - (a_t - a_i))^2, batch mean."""
    target = F.one_hot(y, a.shape[1]).to(a.dtype)
    a_t = (a * target).sum(dim=1, keepdim=True)
    per_class = F.relu(margin - (a_t - a)).pow(2)
    return (per_class * (1.0 - target)).sum(dim=1).mean()


class CapsuleHeadNet(nn.Module):
    """Backbone -> primary 4x4 matrix capsules -> votes M_i W_tj -> one routing to 10 classes."""

    def __init__(self, routing: str, input_size: int = 40, width: float = 1.0):
        super().__init__()
        if routing not in ("dynamic", "em", "self", "attention"):
            raise ValueError(f"unknown routing '{routing}'")
        self.routing = routing
        self.backbone = Backbone(input_size, width)
        c, g = self.backbone.channels, self.backbone.grid
        self.types = scaled(PRIMARY_TYPES, width)
        self.positions = g * g
        self.num_primary = self.types * self.positions
        dim = POSE * POSE
        self.has_activation = routing in ("em", "self")
        # 1x1 convolutions, written as linear layers over the channels: a (out, in, 1, 1) weight in
        # channels_last memory format (the trainer's) has a last-dimension stride != 1, which
        # bench.io.sha256_tensor cannot hash.
        self.pose = nn.Linear(c, self.types * dim)
        self.activation = nn.Linear(c, self.types) if self.has_activation else None
        # W_tj: a 4x4 matrix per (capsule type, class), shared over positions, drawn from
        # N(0, 0.05^2) as coder3000/SR-CapsNet draws its dynamic-routing class capsules' W
        # (models/smallnet.py). With N(0, 1/4) the attention head's softmax saturated and it did not
        # fit 64 images. Self-routing's class layer computes no poses (SR-CapsNet's final layer,
        # pose_out=False), so it has no W.
        # Stored 3-D (types, J, 16) so that channels_last conversion leaves it alone.
        shape = (self.types, NUM_CLASSES, POSE * POSE)
        self.W = nn.Parameter(torch.randn(shape) * 0.05) if routing != "self" else None
        if routing == "em":
            self.beta_u = nn.Parameter(torch.zeros(NUM_CLASSES))  # zero-initialised, as SR-CapsNet
            self.beta_a = nn.Parameter(torch.zeros(NUM_CLASSES))
            self.register_buffer("steps", torch.zeros(1, dtype=torch.long))  # 1-D: see batch_norm2d
            rows = (torch.arange(g, dtype=torch.float32) + 0.5) / g
            coords = torch.zeros(g, g, POSE, POSE)
            coords[:, :, 0, POSE - 1] = rows.view(g, 1)  # row of the position
            coords[:, :, 1, POSE - 1] = rows.view(1, g)  # column of the position
            # stored 2-D: channels_last conversion (the trainer's) rejects 5-D tensors
            self.register_buffer("coords", coords.view(g * g, dim), persistent=False)
        if routing == "self":
            self.w_route = nn.Parameter(torch.zeros(self.types, NUM_CLASSES, dim))
            self.b_route = nn.Parameter(torch.zeros(self.types, NUM_CLASSES))
        if routing == "attention":
            self.log_priors = nn.Parameter(torch.zeros(NUM_CLASSES, self.types))

    def _per_child(self, t: torch.Tensor) -> torch.Tensor:
        """``(types, ...)`` per-type parameters repeated over positions: ``(types * positions, ...)``."""
        return t.unsqueeze(1).expand(self.types, self.positions, *t.shape[1:]).reshape(
            self.num_primary, *t.shape[1:]
        )

    def _votes(self, poses: torch.Tensor) -> torch.Tensor:
        """``(B, T, G, 16)`` poses -> ``(B, J, T, G, 16)`` votes M_i W_tj."""
        b = poses.shape[0]
        m = poses.reshape(b, self.types, self.positions, POSE, POSE)
        w = self.W.view(self.types, NUM_CLASSES, POSE, POSE)
        v = torch.einsum("btgxy,tjyz->bjtgxz", m, w)
        return v.reshape(b, NUM_CLASSES, self.types, self.positions, POSE * POSE)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Output:
        h = self.backbone(x).flatten(2).transpose(1, 2)  # (B, G, C)
        b = h.shape[0]
        dim = POSE * POSE
        # (B, G, T*16) -> (B, T, G, 16): child i = (type, position), type-major
        poses = self.pose(h).reshape(b, self.positions, self.types, dim).transpose(1, 2)
        if self.routing == "dynamic":
            u_hat = self._votes(squash(poses)).reshape(b, NUM_CLASSES, self.num_primary, dim)
            v, _ = dynamic_routing(u_hat, ITERATIONS)  # float32 under autocast by itself
            return self._vector_output(v)
        if self.routing == "attention":
            u_hat = self._votes(efficient_squash(poses)).reshape(b, NUM_CLASSES, self.num_primary, dim)
            priors = self._per_child(self.log_priors.t()).t()  # (J, I)
            with float32_routing(x.device):
                v, _ = self_attention_routing(u_hat.float(), priors.float())
            return self._vector_output(v)
        a = torch.sigmoid(self.activation(h)).transpose(1, 2).reshape(b, self.num_primary)
        if self.routing == "em":
            votes = self._votes(poses) + self.coords.to(poses.dtype)  # coordinate addition
            votes = votes.reshape(b, NUM_CLASSES, self.num_primary, dim).transpose(1, 2)
            with float32_routing(x.device):
                a_out, mu, _ = em_routing(votes.float(), a.float(), self.beta_u.float(),
                                          self.beta_a.float(), ITERATIONS)
            return self._activation_output(a_out, a_out, mu)
        u = poses.reshape(b, self.num_primary, dim)
        u_hat = u.unsqueeze(1).expand(b, NUM_CLASSES, self.num_primary, dim)
        with float32_routing(x.device):
            a_out, v, _ = self_routing(u.float(), a.float(), self._per_child(self.w_route).float(),
                                       self._per_child(self.b_route).float(), u_hat.float())
        return self._activation_output(torch.log(a_out.clamp_min(1e-12)), a_out, v)

    @staticmethod
    def _vector_output(v: torch.Tensor) -> Output:
        lengths = torch.linalg.vector_norm(v, dim=-1)
        rows = torch.arange(v.shape[0], device=v.device)
        return Output(logits=lengths, scores=lengths, features=v[rows, lengths.argmax(dim=1)],
                      reconstruction=None)

    @staticmethod
    def _activation_output(logits: torch.Tensor, a: torch.Tensor, poses: torch.Tensor) -> Output:
        rows = torch.arange(a.shape[0], device=a.device)
        return Output(logits=logits, scores=a, features=poses[rows, a.argmax(dim=1)], reconstruction=None)

    def margin(self) -> torch.Tensor:
        """The spread-loss margin now: 0.2 -> 0.9 linearly over MARGIN_RAMP_STEPS training steps."""
        progress = (self.steps.float() / MARGIN_RAMP_STEPS).clamp(max=1.0)
        return 0.2 + 0.7 * progress

    def loss(self, out: Output, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Margin loss (dynamic, attention), spread loss (EM), cross-entropy on log a (self)."""
        if self.routing in ("dynamic", "attention"):
            return margin_loss(out.logits.float(), y)
        if self.routing == "self":
            return F.nll_loss(out.logits.float(), y)
        loss = spread_loss(out.logits.float(), y, self.margin())
        if self.training and torch.is_grad_enabled():
            self.steps += 1
        return loss


def head_parameter_table(input_size: int = 28, width: float = 1.0) -> list[dict]:
    """Per head: backbone, head and total parameters, and the total's relative difference to
    ``head-dynamic``'s. Counted on the meta device (no memory)."""
    rows = []
    with torch.device("meta"):
        for kind in HEADS:
            model = create_model(f"head-{kind}", input_size=input_size, width=width)
            total = count_parameters(model)
            backbone = count_parameters(model.backbone)
            rows.append({"model": f"head-{kind}", "backbone": backbone, "head": total - backbone,
                         "total": total})
    ref = next(r["total"] for r in rows if r["model"] == "head-dynamic")
    for r in rows:
        r["vs_dynamic"] = (r["total"] - ref) / ref
    return rows


@register_model("head-maxpool", family="head")
def head_maxpool(*, input_size: int, width: float) -> PoolingHeadNet:
    """Shared backbone, global max pool, linear."""
    return PoolingHeadNet("maxpool", input_size=input_size, width=width)


@register_model("head-avgpool", family="head")
def head_avgpool(*, input_size: int, width: float) -> PoolingHeadNet:
    """Shared backbone, global average pool, linear."""
    return PoolingHeadNet("avgpool", input_size=input_size, width=width)


@register_model("head-fc", family="head")
def head_fc(*, input_size: int, width: float) -> PoolingHeadNet:
    """Shared backbone, flatten, linear."""
    return PoolingHeadNet("fc", input_size=input_size, width=width)


@register_model("head-dynamic", family="head")
def head_dynamic(*, input_size: int, width: float) -> CapsuleHeadNet:
    """Shared backbone, matrix primary capsules, dynamic routing (Sabour et al. 2017)."""
    return CapsuleHeadNet("dynamic", input_size=input_size, width=width)


@register_model("head-em", family="head")
def head_em(*, input_size: int, width: float) -> CapsuleHeadNet:
    """Shared backbone, matrix primary capsules, EM routing (Hinton et al. 2018)."""
    return CapsuleHeadNet("em", input_size=input_size, width=width)


@register_model("head-self", family="head")
def head_self(*, input_size: int, width: float) -> CapsuleHeadNet:
    """Shared backbone, matrix primary capsules, self-routing (Hahn et al. 2019)."""
    return CapsuleHeadNet("self", input_size=input_size, width=width)


@register_model("head-attention", family="head")
def head_attention(*, input_size: int, width: float) -> CapsuleHeadNet:
    """Shared backbone, matrix primary capsules, self-attention routing (Mazzia et al. 2021)."""
    return CapsuleHeadNet("attention", input_size=input_size, width=width)
