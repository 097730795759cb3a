"""``capsnet-exp-squash``: Sabour et al.'s CapsNet (arXiv:1710.09829) with the squash of
Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021, arXiv:2101.12491),
v = (1 - 1/e^|s|) s / |s|, in place of Eq. 1, in the primary capsules and in every iteration of
routing-by-agreement. Everything else is the suite's CapsNet: layers, W's initialisation, the
decoder, the margin loss and the reconstruction weight.

It is built from the public pieces of ``bench.models``: the :class:`~bench.models.capsnet.CapsNet`
class, :func:`~bench.models.routing.efficient_squash`, :func:`~bench.models.registry.register_model`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.models.capsnet import CapsNet
from bench.models.registry import register_model
from bench.models.routing import efficient_squash


def routing_by_agreement(u_hat: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedure 1 of Sabour et al. (2017) with :func:`efficient_squash`, written as the paper
    states it (autograd through every iteration, like the suite's CapsNet).

    ``u_hat`` is ``(B, J, I, D)``: the prediction of child i for parent j. Returns the parents
    ``(B, J, D)`` and the last coupling coefficients ``(B, J, I)``, which sum to 1 over j.
    """
    b, j, i, d = u_hat.shape
    u = u_hat.reshape(b * j, i, d)  # one (I, D) block per (sample, parent): batched products
    logits = u_hat.new_zeros(b, j, i)  # b_ij = 0
    for r in range(iterations):
        c = torch.softmax(logits, dim=1)  # over the parents (Eq. 3)
        s = torch.bmm(c.reshape(b * j, 1, i), u).view(b, j, d)  # s_j = sum_i c_ij u_hat_j|i
        v = efficient_squash(s)
        if r + 1 < iterations:  # b_ij += <u_hat_j|i, v_j>
            logits = logits + torch.bmm(v.view(b * j, 1, d), u.transpose(1, 2)).view(b, j, i)
    return v, c


class ExpSquashCapsNet(CapsNet):
    """:class:`~bench.models.capsnet.CapsNet` with Efficient-CapsNet's squash."""

    def primary_capsules(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        p = self.primary(h)  # (B, types*8, g, g), channels grouped (type, atom)
        b = p.shape[0]
        p = p.reshape(b, self.types, self.primary_dim, self.grid * self.grid)
        return efficient_squash(p.transpose(2, 3).reshape(b, self.num_primary, self.primary_dim))

    def digit_capsules(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return routing_by_agreement(self.predictions(u), self.iterations)


@register_model("capsnet-exp-squash", family="capsule")
def capsnet_exp_squash(*, input_size: int, width: float) -> ExpSquashCapsNet:
    """The paper's CapsNet (3 iterations, decoder) with Efficient-CapsNet's squash."""
    return ExpSquashCapsNet(input_size=input_size, width=width, iterations=3, reconstruction=True)
