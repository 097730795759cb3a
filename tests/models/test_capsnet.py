"""CapsNet (Sabour et al. 2017): squash (Eq. 1), routing (Procedure 1), margin loss (Eq. 4),
decoder masking, and the paper's parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.models.capsnet import (
    RECON_WEIGHT,
    RELEASED_RECON_WEIGHT,
    CapsNet,
    dynamic_routing,
    margin_loss,
    squash,
)
from bench.models.registry import Output, count_parameters, create_model


def _reference_routing(u_hat: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedure 1 written literally, one capsule pair at a time, differentiated by autograd."""
    b, j, i, _ = u_hat.shape
    logits = [[[u_hat.new_zeros(()) for _ in range(i)] for _ in range(j)] for _ in range(b)]
    for r in range(iterations):
        c = [[[None] * i for _ in range(j)] for _ in range(b)]
        for bb in range(b):
            for ii in range(i):
                col = torch.softmax(torch.stack([logits[bb][jj][ii] for jj in range(j)]), 0)
                for jj in range(j):
                    c[bb][jj][ii] = col[jj]
        v = torch.stack([
            torch.stack([
                squash(sum(c[bb][jj][ii] * u_hat[bb, jj, ii] for ii in range(i)))
                for jj in range(j)
            ])
            for bb in range(b)
        ])
        if r + 1 < iterations:
            for bb in range(b):
                for jj in range(j):
                    for ii in range(i):
                        logits[bb][jj][ii] = logits[bb][jj][ii] + u_hat[bb, jj, ii] @ v[bb, jj]
    c_t = torch.stack([torch.stack([torch.stack(row) for row in cb]) for cb in c])
    return v, c_t


# ----------------------------------------------------------------------------- parameter counts


def test_paper_parameter_counts_at_28x28():
    """Section 5: 8.2M parameters, 6.8M without the reconstruction subnetwork."""
    with torch.device("meta"):
        full = create_model("capsnet", input_size=28, width=1.0)
        norecon = create_model("capsnet-r3-norecon", input_size=28, width=1.0)
    assert count_parameters(full) == 8_215_568
    assert count_parameters(norecon) == 6_804_224
    assert count_parameters(full) - count_parameters(full.decoder) == 6_804_224
    assert full.num_primary == 1152  # 32 types x 6 x 6 positions
    assert tuple(full.W.shape) == (1152, 8, 10 * 16)  # one 8x16 W_ij per (i, j), no bias


def test_width_scales_conv_and_primary_types_but_not_digitcaps_or_decoder():
    m = CapsNet(input_size=40, width=0.25)
    assert m.conv1.out_channels == 64 and m.types == 8
    assert m.primary.out_channels == 8 * 8
    assert m.num_primary == 8 * 12 * 12  # 40 -> 32 (9x9) -> 12 (9x9 stride 2)
    assert m.W.shape == (8 * 12 * 12, 8, 160)
    assert m.decoder[0].in_features == 160 and m.decoder[-2].out_features == 40 * 40
    tiny = CapsNet(input_size=28, width=0.001)
    assert tiny.conv1.out_channels == 1 and tiny.types == 1


def test_predictions_are_one_matrix_per_child_and_parent():
    """Eq. 2: u_hat_{j|i} = W_ij u_i, laid out (B, J, I, D)."""
    torch.manual_seed(0)
    model = CapsNet(input_size=20, width=0.04)  # 1 capsule type on a 2x2 grid: I = 4
    u = torch.randn(2, model.num_primary, 8)
    u_hat = model.predictions(u)
    assert u_hat.shape == (2, 10, 4, 16)
    w = model.W.detach().view(4, 8, 10, 16)
    for b in range(2):
        for i in range(4):
            for j in range(10):
                assert torch.allclose(u_hat[b, j, i], u[b, i] @ w[i, :, j], atol=1e-6)


# ----------------------------------------------------------------------------- squash (Eq. 1)


def test_squash_norm_below_one_monotone_and_keeps_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    norms = torch.tensor([0.0, 1e-3, 0.1, 0.5, 1.0, 2.0, 10.0, 1e3])
    out = squash(norms[:, None] * direction)
    out_norms = out.norm(dim=-1)
    assert torch.all(out_norms < 1)
    assert torch.all(out_norms[1:] > out_norms[:-1])  # strictly increasing in |s|
    expected = norms**2 / (1 + norms**2)  # Eq. 1's length
    assert torch.allclose(out_norms, expected, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(out[1:], direction.expand(7, 16), dim=-1)
    assert torch.allclose(cos, torch.ones(7), atol=1e-5)


def test_squash_has_finite_gradient_at_zero():
    s = torch.zeros(3, 8, requires_grad=True)
    squash(s).sum().backward()
    assert torch.isfinite(s.grad).all()


# ------------------------------------------------------------------------ routing (Procedure 1)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_coupling_coefficients_sum_to_one_over_parents(iterations):
    u_hat = torch.randn(4, 10, 36, 16)
    v, c = dynamic_routing(u_hat, iterations)
    assert v.shape == (4, 10, 16) and c.shape == (4, 10, 36)
    assert torch.allclose(c.sum(dim=1), torch.ones(4, 36), atol=1e-6)
    assert (c >= 0).all()
    if iterations == 1:  # b starts at 0: uniform coupling
        assert torch.allclose(c, torch.full_like(c, 0.1))


def test_routing_matches_literal_procedure_values_and_gradients():
    torch.manual_seed(0)
    u_hat = (0.5 * torch.randn(2, 3, 5, 4, dtype=torch.double)).requires_grad_()
    weights_v, weights_c = torch.randn(4, dtype=torch.double), torch.randn(5, dtype=torch.double)
    for iterations in (1, 2, 3):
        v, c = dynamic_routing(u_hat, iterations)
        v_ref, c_ref = _reference_routing(u_hat, iterations)
        assert torch.allclose(v, v_ref, atol=1e-12) and torch.allclose(c, c_ref, atol=1e-12)
        loss = lambda v, c: (v * weights_v).sum() + (c * weights_c).sum()  # noqa: E731
        (g,) = torch.autograd.grad(loss(v, c), u_hat)
        (g_ref,) = torch.autograd.grad(loss(v_ref, c_ref), u_hat)
        assert torch.allclose(g, g_ref, atol=1e-10), iterations


def test_routing_gradcheck():
    u_hat = (0.5 * torch.randn(2, 3, 4, 3, dtype=torch.double)).requires_grad_()
    assert torch.autograd.gradcheck(lambda u: dynamic_routing(u, 3), (u_hat,))


def test_routing_moves_coupling_towards_the_parent_the_children_agree_on():
    """Children whose predictions for parent 0 agree get coupled to it more with each iteration."""
    g = torch.Generator().manual_seed(1)
    u_hat = 0.05 * torch.randn(1, 10, 50, 16, generator=g)
    u_hat[:, 0] = 0.2 * torch.ones(16) + 0.01 * torch.randn(50, 16, generator=g)
    shares = [dynamic_routing(u_hat, r)[1][0, 0].mean().item() for r in (1, 2, 3)]
    assert shares[0] == pytest.approx(0.1)
    assert shares[0] < shares[1] < shares[2]


def test_routing_rejects_bad_arguments():
    with pytest.raises(ValueError):
        dynamic_routing(torch.zeros(2, 10, 3, 16), 0)
    with pytest.raises(ValueError):
        dynamic_routing(torch.zeros(10, 3, 16), 3)


# ----------------------------------------------------------------------------- losses


def test_margin_loss_equals_hand_computed_value():
    lengths = torch.tensor([[0.8, 0.3, 0.05], [0.95, 0.2, 0.6]])
    y = torch.tensor([0, 2])
    # sample 0: (0.9-0.8)^2 + 0.5 (0.3-0.1)^2 + 0          = 0.01 + 0.02           = 0.03
    # sample 1: (0.9-0.6)^2 + 0.5 (0.95-0.1)^2 + 0.5 (0.2-0.1)^2 = 0.09 + 0.36125 + 0.005 = 0.45625
    assert margin_loss(lengths, y).item() == pytest.approx((0.03 + 0.45625) / 2, abs=1e-7)
    assert margin_loss(torch.tensor([[0.95, 0.05]]), torch.tensor([0])).item() == 0.0


def test_total_loss_is_margin_plus_scaled_sum_of_squared_errors():
    model = CapsNet(input_size=20, width=0.01)
    lengths = torch.tensor([[0.8, 0.3] + [0.0] * 8])
    x = torch.full((1, 1, 20, 20), 0.5)
    recon = torch.zeros(1, 400)  # squared error 0.25 per pixel -> SSE 100
    out = Output(lengths, lengths, torch.zeros(1, 16), recon)
    expected = (0.01 + 0.02) + 0.0005 * 100.0
    assert model.loss(out, x, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)
    no_recon = Output(lengths, lengths, torch.zeros(1, 16), None)
    assert model.loss(no_recon, x, torch.tensor([0])).item() == pytest.approx(0.03, rel=1e-6)
    # The released code's balance: reconstruction weighted 0.0005 x 20 against Eq. 4.
    released = create_model("capsnet-released-loss", input_size=20, width=0.01)
    assert released.loss(out, x, torch.tensor([0])).item() == pytest.approx(0.03 + 0.01 * 100.0,
                                                                          rel=1e-6)


def test_released_margin_loss_is_eq4_over_20():
    """The released loss, written out in numpy: per class 0.5 * (cost with logits - 0.5 and
    margin 0.4), down-weight 0.5 on absent classes, then a mean over batch AND classes."""
    lengths = np.array([[0.8, 0.3, 0.05], [0.95, 0.2, 0.6]])
    labels = np.eye(3)[[0, 2]]
    logits = lengths - 0.5
    pos = labels * (logits < 0.4) * (logits - 0.4) ** 2
    neg = (1 - labels) * (logits > -0.4) * (logits + 0.4) ** 2
    released = (0.5 * pos + 0.5 * 0.5 * neg).mean()
    eq4 = margin_loss(torch.tensor(lengths), torch.tensor([0, 2])).item()
    # mean over 3 classes here (10 in the model): Eq. 4 / (2 * classes)
    assert released == pytest.approx(eq4 / (2 * 3), rel=1e-9)
    assert pytest.approx(RECON_WEIGHT * 2 * 10) == RELEASED_RECON_WEIGHT


# ----------------------------------------------------------------------------- forward contract


def test_forward_outputs_and_decoder_masking():
    torch.manual_seed(0)
    model = CapsNet(input_size=28, width=0.125).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        v, _ = model.digit_capsules(model.primary_capsules(x))
    assert out.logits.shape == (5, 10) and torch.equal(out.logits, out.scores)
    assert ((out.scores >= 0) & (out.scores < 1)).all()
    assert torch.allclose(out.scores, v.norm(dim=-1), atol=1e-6)
    pred = out.scores.argmax(1)
    assert torch.allclose(out.features, v[torch.arange(5), pred])
    assert out.reconstruction.shape == (5, 784)
    assert ((out.reconstruction >= 0) & (out.reconstruction <= 1)).all()
    with torch.no_grad():
        by_pred = model(x, pred).reconstruction
        by_other = model(x, (pred + 1) % 10).reconstruction
        masked = v * torch.nn.functional.one_hot(pred, 10)[..., None]
        by_hand = model.decoder(masked.flatten(1))
    assert torch.allclose(out.reconstruction, by_pred)  # no label: mask by the longest capsule
    assert torch.allclose(by_pred, by_hand)
    assert not torch.allclose(by_pred, by_other)  # with a label: mask by the label
    assert create_model("capsnet-r1-norecon", input_size=28, width=0.125)(x).reconstruction is None
