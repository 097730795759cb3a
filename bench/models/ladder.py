"""The component ladder: the CapsNet's 9x9 trunk with one component changed per step.

Gu, Tresp & Hu (CVPR 2021, arXiv:2103.15459, abstract) name five components in which a CapsNet
differs from a ConvNet: the transformation process (a pose matrix W per primary capsule), dynamic
routing, the squash, the margin loss and the class-conditional reconstruction. Every model here is
the CapsNet's trunk (conv 9x9 ReLU -> conv 9x9 stride 2, Sabour et al. 2017, Fig. 1) at the same
width, and each step differs from its neighbour in exactly one named component
(tests/models/test_ladder.py checks modules, parameter shapes, loss and a forward pass).

From the CapsNet down (:class:`~bench.models.capsnet.CapsNet` with its switches; each step keeps the
changes above it; the ladder forks after ``capsnet-no-routing``):

    capsnet -> capsnet-no-routing (1 iteration: uniform coupling c_ij = 1/10)
            -> capsnet-shared-w (W shared over positions: one per capsule type and class)
    capsnet-no-routing
            -> capsnet-no-squash (identity instead of Eq. 1 on primary and class capsules)
            -> capsnet-ce (cross-entropy on the class-vector lengths instead of Eq. 4)
            -> capsnet-ce-no-recon (no reconstruction decoder)

Why the fork (our choice, measured): with W shared over positions AND no squash, the class vectors
are a linear map of the summed primary capsules, with no nonlinearity between the trunk's last
convolution and the lengths, and the margin loss on those lengths did not train (n = 3,000, seed 0,
1,000 steps, width 1/8: 41 % validation accuracy, 61 % without the decoder); the same step from
``capsnet-no-routing`` (W per position) reached 95.5 %. So squash, loss and reconstruction are
removed with W per position, and sharing W is its own branch.

From the fully connected head up (:class:`~bench.models.convnet_k9.ConvNetK9` with its switches):

    convnet-k9 -> convnet-k9-squash (the 160 units as 10 squashed 16-D class vectors, lengths as
                                     logits, instead of ReLU -> FC 10)
               -> convnet-k9-margin (margin loss instead of cross-entropy)
               -> convnet-k9-recon (+ the CapsNet's decoder: Gu et al.'s recipe on this head)

Pooling on the same trunk: convnet-k9 -> convnet-k9-avgpool (global average pool before the 160-D
layer), and convnet-k9-recon -> convnet-gu (the same change with the recipe: Gu et al.'s ConvNet,
:mod:`bench.models.convnet_gu`).

With shared W and uniform coupling the CapsNet's class layer is a global sum pool of the primary
capsules followed by one linear map (see :mod:`bench.models.capsnet`), so ``capsnet-shared-w`` is a
pooling head. With W per position, uniform coupling, no squash and cross-entropy, the class layer is
one linear map of the flattened primary capsules, a fully connected head like ``convnet-k9``'s; the
two ladders still do not meet in one step (the CapsNet's primary capsules have no ReLU, its W no
bias and one hidden layer fewer; their initialisations differ).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.models.capsnet import CapsNet
from bench.models.convnet_k9 import ConvNetK9
from bench.models.registry import register_model

__all__ = ["COMPONENTS", "LADDER", "Step"]

# The five components of Gu et al. and the pooling of their ConvNet, in the order the table reads.
COMPONENTS = ("routing", "W", "squash", "loss", "recon", "pool")


@dataclass(frozen=True)
class Step:
    """One ladder step: ``model`` differs from ``neighbour`` in ``component`` only."""

    model: str
    neighbour: str | None  # None: the top of its ladder
    component: str  # one of COMPONENTS, or "" for a ladder's top
    change: str  # what the step does, in words
    # Each component's state in this model (the table's columns), in COMPONENTS order.
    state: tuple[str, str, str, str, str, str]


LADDER: tuple[Step, ...] = (
    Step("capsnet", None, "", "the CapsNet", ("3 it.", "per position", "yes", "margin", "yes", "—")),
    Step("capsnet-no-routing", "capsnet", "routing", "no routing (uniform coupling)",
         ("uniform", "per position", "yes", "margin", "yes", "—")),
    Step("capsnet-shared-w", "capsnet-no-routing", "W", "W shared over positions",
         ("uniform", "shared", "yes", "margin", "yes", "—")),
    Step("capsnet-no-squash", "capsnet-no-routing", "squash", "no squash",
         ("uniform", "per position", "no", "margin", "yes", "—")),
    Step("capsnet-ce", "capsnet-no-squash", "loss", "cross-entropy instead of margin loss",
         ("uniform", "per position", "no", "CE", "yes", "—")),
    Step("capsnet-ce-no-recon", "capsnet-ce", "recon", "no reconstruction",
         ("uniform", "per position", "no", "CE", "no", "—")),
    Step("convnet-k9", None, "", "the fully connected head", ("—", "FC", "no", "CE", "no", "flatten")),
    Step("convnet-k9-squash", "convnet-k9", "squash", "+ squashed class vectors",
         ("—", "FC", "yes", "CE", "no", "flatten")),
    Step("convnet-k9-margin", "convnet-k9-squash", "loss", "+ margin loss",
         ("—", "FC", "yes", "margin", "no", "flatten")),
    Step("convnet-k9-recon", "convnet-k9-margin", "recon", "+ reconstruction",
         ("—", "FC", "yes", "margin", "yes", "flatten")),
    Step("convnet-k9-avgpool", "convnet-k9", "pool", "global average pool",
         ("—", "FC", "no", "CE", "no", "avg")),
    Step("convnet-gu", "convnet-k9-recon", "pool", "global average pool (Gu et al.'s ConvNet)",
         ("—", "FC", "yes", "margin", "yes", "avg")),
)


@register_model("capsnet-no-routing", family="capsule")
def capsnet_no_routing(*, input_size: int, width: float) -> CapsNet:
    """capsnet, 1 routing iteration (uniform coupling); the same model as capsnet-r1."""
    return CapsNet(input_size=input_size, width=width, iterations=1)


@register_model("capsnet-shared-w", family="capsule")
def capsnet_shared_w(*, input_size: int, width: float) -> CapsNet:
    """capsnet-no-routing with W shared over positions."""
    return CapsNet(input_size=input_size, width=width, iterations=1, shared_w=True)


@register_model("capsnet-no-squash", family="capsule")
def capsnet_no_squash(*, input_size: int, width: float) -> CapsNet:
    """capsnet-no-routing without the squash (W per position: see the module's docstring)."""
    return CapsNet(input_size=input_size, width=width, iterations=1, squash=False)


@register_model("capsnet-ce", family="capsule")
def capsnet_ce(*, input_size: int, width: float) -> CapsNet:
    """capsnet-no-squash with cross-entropy on the lengths instead of the margin loss."""
    return CapsNet(input_size=input_size, width=width, iterations=1, squash=False, loss="ce")


@register_model("capsnet-ce-no-recon", family="capsule")
def capsnet_ce_no_recon(*, input_size: int, width: float) -> CapsNet:
    """capsnet-ce without the reconstruction decoder."""
    return CapsNet(input_size=input_size, width=width, iterations=1, squash=False, loss="ce",
                   reconstruction=False)


@register_model("convnet-k9-squash", family="convnet")
def convnet_k9_squash(*, input_size: int, width: float) -> ConvNetK9:
    """convnet-k9 with squashed 10 x 16D class vectors (lengths as logits) for ReLU -> FC 10."""
    return ConvNetK9(input_size=input_size, width=width, head="squash")


@register_model("convnet-k9-margin", family="convnet")
def convnet_k9_margin(*, input_size: int, width: float) -> ConvNetK9:
    """convnet-k9-squash with the margin loss instead of cross-entropy."""
    return ConvNetK9(input_size=input_size, width=width, head="squash", loss="margin")


@register_model("convnet-k9-recon", family="convnet")
def convnet_k9_recon(*, input_size: int, width: float) -> ConvNetK9:
    """convnet-k9-margin with the CapsNet's reconstruction decoder."""
    return ConvNetK9(input_size=input_size, width=width, head="squash", loss="margin",
                     reconstruction=True)


@register_model("convnet-k9-avgpool", family="convnet")
def convnet_k9_avgpool(*, input_size: int, width: float) -> ConvNetK9:
    """convnet-k9 with a global average pool before the 160-D layer."""
    return ConvNetK9(input_size=input_size, width=width, pool="avg")
