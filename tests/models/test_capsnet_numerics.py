"""The CapsNet's outputs and gradients against a literal float64 transcription of Sabour et al.
(2017), Eq. 1-4 and Procedure 1, at the two sizes the benchmarks train (40x40 at width 1/8,
28x28 at width 1) and 1, 2 and 3 routing iterations.

The oracle below shares nothing with ``bench.models.capsnet`` but the parameters it reads: its own
squash, predictions by ``einsum`` (Eq. 2), routing as the procedure's loop (b_ij = 0;
c_i = softmax_j(b_i) (Eq. 3); s_j = sum_i c_ij u_hat_{j|i}; v_j = squash(s_j) (Eq. 1);
b_ij += u_hat_{j|i} . v_j), the margin loss term by term (Eq. 4) and autograd for the gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.models.capsnet import CapsNet

SIZES = [(40, 0.125), (28, 1.0)]  # (input size, width): smoke/quick cells, the paper's MNIST model
BATCH = 3
# Max |model - oracle| over max |oracle| per tensor, float32 model against the float64 oracle:
# at most 1.3e-6 for v, c and the loss and 2.2e-6 for the gradients on an x86-64 CPU (AVX-512).
RTOL_VALUES = 1e-5
RTOL_GRADS = 1e-5


def _squash(s: torch.Tensor) -> torch.Tensor:
    """Eq. 1: v = |s|^2 / (1 + |s|^2) * s / |s| over the last dimension."""
    norm = torch.linalg.vector_norm(s, dim=-1, keepdim=True)
    return norm**2 / (1 + norm**2) * s / norm


def _oracle(model: CapsNet, x: torch.Tensor, y: torch.Tensor):
    """(v (B, J, D), c (B, J, I), loss) of a float64 copy of ``model``, and that copy."""
    m = copy.deepcopy(model).double()
    x = x.double()
    # PrimaryCaps: channels grouped (type, atom), capsules ordered type-major, then position.
    p = m.primary(F.relu(m.conv1(x)))
    b, _, g, _ = p.shape
    u = _squash(p.view(b, m.types, m.primary_dim, g * g).permute(0, 1, 3, 2).reshape(b, -1, 8))
    n_i, n_j, n_d = u.shape[1], 10, m.digit_dim
    w = m.W.view(n_i, m.primary_dim, n_j, n_d)  # W[i, :, j, :] is W_ij^T
    u_hat = torch.einsum("bik,ikjd->bjid", u, w)  # Eq. 2
    logits = torch.zeros(b, n_j, n_i, dtype=x.dtype)
    for r in range(m.iterations):  # Procedure 1
        c = torch.softmax(logits, dim=1)  # Eq. 3, over the parents j
        s = torch.einsum("bji,bjid->bjd", c, u_hat)
        v = _squash(s)
        if r + 1 < m.iterations:
            logits = logits + torch.einsum("bjid,bjd->bji", u_hat, v)
    lengths = torch.linalg.vector_norm(v, dim=-1)
    loss = x.new_zeros(())
    for bb in range(b):  # Eq. 4, summed over classes, averaged over the batch
        for k in range(n_j):
            if k == int(y[bb]):
                loss = loss + torch.clamp(0.9 - lengths[bb, k], min=0) ** 2
            else:
                loss = loss + 0.5 * torch.clamp(lengths[bb, k] - 0.1, min=0) ** 2
    loss = loss / b
    if m.decoder is not None:  # the decoder of the true class's capsule, Section 4.1
        masked = torch.stack([v[bb] * (torch.arange(n_j) == y[bb]).double()[:, None]
                              for bb in range(b)])
        recon = m.decoder(masked.flatten(1))
        loss = loss + m.recon_weight * ((recon - x.flatten(1)) ** 2).sum(dim=1).mean()
    return v, c, loss, m


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max())


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("size, width", SIZES, ids=[f"{s}x{s}-w{w:g}" for s, w in SIZES])
def test_outputs_and_gradients_match_the_papers_equations(size, width, iterations):
    torch.manual_seed(0)
    model = CapsNet(input_size=size, width=width, iterations=iterations)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 1, size, size, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)

    v, c = model.digit_capsules(model.primary_capsules(x))
    loss = model.loss(model(x, y), x, y)
    loss.backward()
    v_ref, c_ref, loss_ref, ref = _oracle(model, x, y)
    loss_ref.backward()

    assert _rel(v, v_ref) < RTOL_VALUES
    assert _rel(c, c_ref) < RTOL_VALUES
    assert _rel(loss, loss_ref) < RTOL_VALUES
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert _rel(p.grad, p_ref.grad) < RTOL_GRADS, name
