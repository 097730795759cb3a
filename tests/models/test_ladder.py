"""The component ladder (bench/models/ladder.py) and Gu et al.'s ConvNet: each step differs from its
neighbour in exactly the named component.

Oracles: hand-listed module types and parameter shapes (width 1/8 at 40x40: 32 channels, 4
primary capsule types on a 12 x 12 grid, 576 primary capsules), hand-worked loss values, and
loop-based versions of Eq. 1 (squash), Eq. 2 and the uniform coupling (c = 1/10 for b = 0).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.models.capsnet import CapsNet
from bench.models.convnet_k9 import ConvNetK9
from bench.models.ladder import COMPONENTS, LADDER
from bench.models.registry import Output, count_parameters, create_model, model_names

SIZE, WIDTH = 40, 0.125
TYPES, GRID, CH = 4, 12, 32  # scaled(32, 1/8), (40 - 8 - 9) // 2 + 1, scaled(256, 1/8)
PRIMARY = TYPES * GRID * GRID  # 576


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, input_size=SIZE, width=WIDTH).eval()


def leaf_types(model: nn.Module) -> list[tuple[str, str]]:
    return [(n, type(m).__name__) for n, m in model.named_modules() if not list(m.children())]


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def squash_loop(s: torch.Tensor) -> torch.Tensor:
    """Eq. 1 vector by vector: |s|^2 / (1 + |s|^2) * s / |s|."""
    out = torch.empty_like(s)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in s.shape[:-1]]).tolist():
        idx = tuple(idx) if isinstance(idx, list) else (idx,)
        v = s[idx]
        n2 = float((v * v).sum())
        out[idx] = v * (n2 / (1 + n2) / math.sqrt(n2))
    return out


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, SIZE, SIZE, generator=g)


def test_every_step_registered_and_named_once():
    names = [s.model for s in LADDER]
    assert len(names) == len(set(names))
    assert set(names) <= set(model_names())
    assert "convnet-gu" in names
    for s in LADDER:
        assert (s.neighbour is None) == (s.component == "")
        assert s.neighbour is None or s.neighbour in names
        assert s.component in COMPONENTS + ("",)
        assert len(s.state) == len(COMPONENTS)


def test_state_columns_differ_in_exactly_the_named_component():
    by_name = {s.model: s for s in LADDER}
    for s in LADDER:
        if s.neighbour is None:
            continue
        other = by_name[s.neighbour].state
        differ = [c for c, a, b in zip(COMPONENTS, s.state, other, strict=True) if a != b]
        assert differ == [s.component], s.model


def test_capsnet_switches_as_flags():
    cases = {
        "capsnet-no-routing": (1, False, True, "margin", True),
        "capsnet-shared-w": (1, True, True, "margin", True),
        "capsnet-no-squash": (1, False, False, "margin", True),
        "capsnet-ce": (1, False, False, "ce", True),
        "capsnet-ce-no-recon": (1, False, False, "ce", False),
        "capsnet": (3, False, True, "margin", True),
    }
    for name, want in cases.items():
        m = build(name)
        assert isinstance(m, CapsNet)
        got = (m.iterations, m.shared_w, m.use_squash, m.loss_kind, m.decoder is not None)
        assert got == want, name


# ------------------------------------------------------------------ structure and parameter shapes


def test_routing_step_changes_no_module_and_no_parameter():
    a, b = build("capsnet"), build("capsnet-no-routing")
    assert leaf_types(a) == leaf_types(b)
    assert shapes(a) == shapes(b)


def test_shared_w_step_changes_only_w_shape():
    a, b = build("capsnet-no-routing"), build("capsnet-shared-w")
    assert leaf_types(a) == leaf_types(b)
    sa, sb = shapes(a), shapes(b)
    assert sa.keys() == sb.keys()
    assert {k for k in sa if sa[k] != sb[k]} == {"W"}
    assert sa["W"] == (PRIMARY, 8, 160) and sb["W"] == (TYPES, 8, 160)


@pytest.mark.parametrize(("upper", "lower"), [("capsnet-no-routing", "capsnet-no-squash"),
                                               ("capsnet-no-squash", "capsnet-ce"),
                                               ("convnet-k9-squash", "convnet-k9-margin")])
def test_squash_and_loss_steps_change_no_module_and_no_parameter(upper, lower):
    a, b = build(upper), build(lower)
    assert leaf_types(a) == leaf_types(b)
    assert shapes(a) == shapes(b)


@pytest.mark.parametrize(("without", "with_"), [("capsnet-ce-no-recon", "capsnet-ce"),
                                                 ("convnet-k9-margin", "convnet-k9-recon")])
def test_recon_step_adds_only_the_decoder(without, with_):
    a, b = build(without), build(with_)
    extra = [t for t in leaf_types(b) if t not in leaf_types(a)]
    assert [t for t in leaf_types(b) if not t[0].startswith("decoder")] == leaf_types(a)
    assert [t for _, t in extra] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    sb = shapes(b)
    assert {k: v for k, v in sb.items() if not k.startswith("decoder")} == shapes(a)
    assert sb["decoder.0.weight"] == (512, 160) and sb["decoder.4.weight"] == (SIZE * SIZE, 1024)


def test_k9_squash_step_replaces_relu_and_fc10_by_the_squash_head():
    a, b = build("convnet-k9"), build("convnet-k9-squash")
    assert [t for _, t in leaf_types(a)] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear",
                                             "ReLU", "Identity", "Linear"]  # Identity: no dropout
    assert [t for _, t in leaf_types(b)] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear",
                                             "Identity"]
    sa, sb = shapes(a), shapes(b)
    assert set(sa) - set(sb) == {"classifier.weight", "classifier.bias"}
    assert all(sa[k] == v for k, v in sb.items())
    assert sb["body.5.weight"] == (160, CH * GRID * GRID)


@pytest.mark.parametrize(("flat", "pooled"), [("convnet-k9", "convnet-k9-avgpool"),
                                               ("convnet-k9-recon", "convnet-gu")])
def test_pool_step_inserts_a_global_average_pool(flat, pooled):
    ta = [t for _, t in leaf_types(build(flat))]
    tb = [t for _, t in leaf_types(build(pooled))]
    i = ta.index("Flatten")
    assert tb == ta[:i] + ["AdaptiveAvgPool2d"] + ta[i:]
    la = [v for k, v in shapes(build(flat)).items()]
    lb = [v for k, v in shapes(build(pooled)).items()]
    differ = [(p, q) for p, q in zip(la, lb, strict=True) if p != q]
    assert differ == [((160, CH * GRID * GRID), (160, CH))]  # only the 160-D layer's fan-in


def test_gu_convnet_parameter_count_is_the_reported_5_3m():
    with torch.device("meta"):
        m = create_model("convnet-gu", input_size=28, width=1.0)
    without = count_parameters(m) - count_parameters(m.decoder)
    # conv 1->256 9x9, conv 256->256 9x9, FC 256->160 (weights and biases), by hand
    assert without == (81 * 256 + 256) + (81 * 256 * 256 + 256) + (256 * 160 + 160) == 5_370_784
    assert round(without / 1e6, 1) == 5.4 and int(without / 1e5) == 53  # "5.3M" truncated


# ------------------------------------------------------------------ losses, hand-worked


def _out(lengths: list[float]) -> Output:
    t = torch.tensor([lengths])
    return Output(logits=t, scores=t, features=t, reconstruction=None)


def test_margin_vs_cross_entropy_on_a_hand_worked_case():
    lengths = [0.95, 0.3, 0.05, 0, 0, 0, 0, 0, 0, 0.2]
    y = torch.tensor([0])
    xb = torch.zeros(1, 1, SIZE, SIZE)
    # Eq. 4: present 0 (0.95 > 0.9); absent 0.5 * ((0.3 - 0.1)^2 + (0.2 - 0.1)^2) = 0.025
    for name in ("capsnet-no-squash", "convnet-k9-margin"):
        assert float(build(name).loss(_out(lengths), xb, y)) == pytest.approx(0.025)
    ce = -0.95 + math.log(sum(math.exp(v) for v in lengths))
    for name in ("capsnet-ce", "convnet-k9-squash"):
        assert float(build(name).loss(_out(lengths), xb, y)) == pytest.approx(ce, rel=1e-6)


def test_reconstruction_term_is_weighted_sum_of_squares():
    m = build("convnet-k9-recon")
    xb = torch.zeros(1, 1, SIZE, SIZE)
    recon = torch.full((1, SIZE * SIZE), 0.5)
    lengths = torch.tensor([[0.95] + [0.0] * 9])
    out = Output(lengths, lengths, lengths, recon)
    assert float(m.loss(out, xb, torch.tensor([0]))) == pytest.approx(0.0005 * 0.25 * SIZE * SIZE)


# ------------------------------------------------------------------ forward passes


def test_no_routing_is_uniform_coupling(x):
    m = build("capsnet-no-routing")
    with torch.no_grad():
        u = m.primary_capsules(x)
        v, c = m.digit_capsules(u)
        u_hat = m.predictions(u)  # (B, J, I, D)
    assert torch.allclose(c, torch.full_like(c, 0.1))
    s = torch.zeros(2, 10, 16)
    for j in range(10):
        for i in range(PRIMARY):
            s[:, j] += 0.1 * u_hat[:, j, i]
    assert torch.allclose(v, squash_loop(s), atol=1e-5)


def test_shared_w_equals_per_position_w_copied_over_positions(x):
    a, b = build("capsnet-no-routing"), build("capsnet-shared-w")
    state = b.state_dict()
    # child i = (type, position), type-major: W_i = W_shared[i // positions]
    state["W"] = b.W.detach().repeat_interleave(GRID * GRID, dim=0)
    a.load_state_dict(state)
    with torch.no_grad():
        oa, ob = a(x), b(x)
    assert torch.allclose(oa.logits, ob.logits, atol=1e-5)
    assert torch.allclose(oa.reconstruction, ob.reconstruction, atol=1e-5)


def test_no_squash_is_the_identity_where_squash_was(x):
    a, b = build("capsnet-no-routing"), build("capsnet-no-squash")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        ua, ub = a.primary_capsules(x), b.primary_capsules(x)
        assert torch.allclose(ua, squash_loop(ub), atol=1e-6)
        va, _ = a.digit_capsules(ua)
        vb, cb = b.digit_capsules(ua)  # the same (squashed) children through both class layers
    assert torch.allclose(cb, torch.full_like(cb, 0.1))
    assert torch.allclose(va, squash_loop(vb), atol=1e-5)


def test_no_squash_class_vectors_are_one_linear_map_of_the_primary_capsules(x):
    m = build("capsnet-no-squash")
    with torch.no_grad():
        u = m.primary_capsules(x)  # (B, I, 8), not squashed
        v, _ = m.digit_capsules(u)
        want = torch.zeros(2, 10, 16)
        for i in range(PRIMARY):  # s_j = sum_i (1/10) W_ij u_i (Eq. 2, c_ij = 1/10), no squash
            want += 0.1 * (u[:, i] @ m.W[i]).view(2, 10, 16)
    assert torch.allclose(v, want, atol=1e-4)


def test_shared_w_uniform_without_squash_is_sum_pool_then_linear(x):
    # The combination the ladder avoids (bench/models/ladder.py: it did not train).
    torch.manual_seed(0)
    m = CapsNet(input_size=SIZE, width=WIDTH, iterations=1, shared_w=True, squash=False).eval()
    with torch.no_grad():
        u = m.primary_capsules(x).view(2, TYPES, GRID * GRID, 8)
        v, _ = m.digit_capsules(u.view(2, PRIMARY, 8))
        pooled = u.sum(dim=2)  # (B, T, 8): global sum pool over positions
        want = sum(pooled[:, t] @ m.W[t] for t in range(TYPES)) / 10  # (B, 160)
    assert torch.allclose(v.flatten(1), want, atol=1e-5)


@pytest.mark.parametrize(("a_name", "b_name"), [("capsnet-no-squash", "capsnet-ce"),
                                                 ("convnet-k9-squash", "convnet-k9-margin")])
def test_loss_step_has_the_same_forward(x, a_name, b_name):
    a, b = build(a_name), build(b_name, seed=5)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)


@pytest.mark.parametrize(("without", "with_"), [("capsnet-ce-no-recon", "capsnet-ce"),
                                                 ("convnet-k9-margin", "convnet-k9-recon")])
def test_recon_step_has_the_same_class_output(x, without, with_):
    a, b = build(without), build(with_)
    a.load_state_dict({k: v for k, v in b.state_dict().items() if not k.startswith("decoder")})
    with torch.no_grad():
        oa, ob = a(x), b(x, torch.tensor([3, 7]))
    assert torch.equal(oa.logits, ob.logits)
    assert oa.reconstruction is None and ob.reconstruction.shape == (2, SIZE * SIZE)


def test_k9_squash_head_is_the_squashed_160_units(x):
    a, b = build("convnet-k9"), build("convnet-k9-squash")
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("classifier")})
    with torch.no_grad():
        pre = a.body[:6](x)  # conv, ReLU, conv, ReLU, flatten, FC 160 (before the ReLU)
        out = b(x)
    want = squash_loop(pre.view(2, 10, 16)).norm(dim=-1)
    assert torch.allclose(out.logits, want, atol=1e-5)
    assert torch.equal(out.scores, out.logits)


def test_avgpool_is_the_mean_over_the_grid(x):
    a, b = build("convnet-k9"), build("convnet-k9-avgpool")
    with torch.no_grad():
        h = a.body[:4](x)  # the trunk
        b.body[0].load_state_dict(a.body[0].state_dict())
        b.body[2].load_state_dict(a.body[2].state_dict())
        got = b.body[:6](x)  # trunk, pool, flatten
    assert h.shape[-2:] == (GRID, GRID)
    want = torch.stack([h[:, :, r, c] for r in range(GRID) for c in range(GRID)]).mean(0)
    assert torch.allclose(got, want, atol=1e-6)


def test_invalid_switches_are_refused():
    with pytest.raises(ValueError, match="iterations=1"):
        CapsNet(input_size=SIZE, width=WIDTH, iterations=3, squash=False)
    with pytest.raises(ValueError, match="loss"):
        CapsNet(input_size=SIZE, width=WIDTH, loss="hinge")
    with pytest.raises(ValueError, match="head='squash'"):
        ConvNetK9(input_size=SIZE, width=WIDTH, loss="margin")
    with pytest.raises(ValueError, match="pool"):
        ConvNetK9(input_size=SIZE, width=WIDTH, pool="max")


def test_every_step_trains_one_step_to_a_finite_loss(x):
    y = torch.tensor([1, 2])
    for s in LADDER:
        m = build(s.model).train()
        loss = m.loss(m(x, y), x, y)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in m.parameters())


def test_models_command_lists_every_step_with_counts(capsys):
    from bench.cli import main

    assert main(["models", "--input-size", "28"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for s in LADDER:
        assert s.model in lines
    assert "5,370,784" in lines["convnet-gu"] and "5.3M (Gu et al.)" in lines["convnet-gu"]
    assert "6,782,128" in lines["convnet-gu"]
