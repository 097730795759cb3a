"""The shared-backbone heads: the model contract, parameter counts, the EM margin, and that each learns."""

from __future__ import annotations

import pytest
import torch

from bench.cell.evaluate import load_model
from bench.cell.plan import TrainSpec
from bench.cell.train import train_cell, weights_hash
from bench.config import TrainConfig, load_profile
from bench.data.canvas import to_float
from bench.data.mnist import load_split
from bench.flops import flops_per_image
from bench.models.heads import HEADS, MARGIN_RAMP_STEPS, PARAM_TOLERANCE, head_parameter_table
from bench.models.registry import create_model, model_names
from tests.overfit import fit_until_perfect

NAMES = [f"head-{h}" for h in HEADS]
CAPSULE = ["head-dynamic", "head-em", "head-self", "head-attention"]


def test_every_head_is_registered():
    assert set(NAMES) <= set(model_names())


@pytest.mark.parametrize("input_size", [28, 40])
@pytest.mark.parametrize("name", NAMES)
def test_output_contract(name, input_size, device):
    torch.manual_seed(0)
    model = create_model(name, input_size=input_size, width=0.125).to(device)
    x = torch.rand(3, 1, input_size, input_size, device=device)
    y = torch.tensor([1, 7, 3], device=device)
    out = model(x, y)
    assert out.logits.shape == (3, 10) and out.scores.shape == (3, 10)
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert out.features.dim() == 2 and out.features.shape[0] == 3
    assert out.reconstruction is None
    loss = model.loss(out, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).scores.shape == (3, 10)


def test_every_head_gets_the_same_backbone_weights_from_the_same_seed():
    states = []
    for name in NAMES:
        torch.manual_seed(5)
        states.append(create_model(name, input_size=28, width=0.25).backbone.state_dict())
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)


def test_parameter_counts_are_reported_and_within_the_stated_tolerance():
    for input_size in (28, 40):
        rows = head_parameter_table(input_size, 1.0)
        print(f"\nheads at {input_size}x{input_size}, width 1:")
        for r in rows:
            print(f"  {r['model']:15s} backbone {r['backbone']:>8,} head {r['head']:>8,} "
                  f"total {r['total']:>8,} vs head-dynamic {r['vs_dynamic']:+.1%}")
        by = {r["model"]: r for r in rows}
        assert len({r["backbone"] for r in rows}) == 1  # one backbone
        capsule_totals = [by[n]["total"] for n in CAPSULE]
        assert max(capsule_totals) <= 1.03 * min(capsule_totals)  # the capsule heads: within 3 %
        if input_size == 28:
            assert all(abs(r["vs_dynamic"]) <= PARAM_TOLERANCE for r in rows)
            # Hand count, width 1: backbone 1*64*25 + 64*128*9 + 4 * 128*128*9 (convolutions, no
            # bias) + 2 * (64 + 4 * 128) (BatchNorm weight and bias) = 518,848; max-pool head
            # 128*10 + 10 = 1,290; dynamic head: pose 128*256 + 256, W 16*10*16 = 35,584.
            assert by["head-dynamic"]["backbone"] == 518_848
            assert by["head-dynamic"]["total"] == 518_848 + 35_584
            assert by["head-maxpool"]["total"] == 518_848 + 1_290
        else:  # the flattened 10x10 grid: the mismatch the module docstring states
            assert by["head-fc"]["vs_dynamic"] > PARAM_TOLERANCE


@pytest.mark.parametrize(
    "name", [n if n == "head-em" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]
)
def test_the_trainer_trains_and_hashes_every_head(name, tmp_path):
    """bench.cell.train (channels_last, deterministic, the weights hash) for a few steps: 5-15 s a head
    on shared cores, so only head-em (batch norm, linear primary capsules, the step buffer) runs
    by default."""
    cfg = TrainConfig(steps=4, val_size=64, eval_every=2, batch_size=16, select="last",
                      lr_schedule="cosine")
    summary = train_cell(TrainSpec(name, 100, 0, width=0.125, train=cfg), tmp_path, "cpu",
                         progress=False)
    assert summary["weights_hash"]
    # the evaluation loads the checkpoint into a freshly built model: the same weights
    model = load_model(tmp_path, "cpu")
    assert weights_hash(model) == summary["weights_hash"]


def test_the_routing_profile_has_every_head():
    assert set(load_profile("routing").models) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_flops_can_be_counted(name):
    assert flops_per_image(name, 28, 1.0) > 0
    assert flops_per_image(name, 28, 1.0, train=True) > flops_per_image(name, 28, 1.0)


def test_em_spread_loss_margin_grows_from_0_2_to_0_9_with_training_steps():
    torch.manual_seed(0)
    model = create_model("head-em", input_size=28, width=0.125)
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    assert model.margin().item() == pytest.approx(0.2)
    model.eval()
    with torch.no_grad():
        model.loss(model(x), x, y)  # evaluation does not advance the schedule
    assert int(model.steps) == 0
    model.train()
    model.loss(model(x, y), x, y)
    assert int(model.steps) == 1
    model.steps.fill_(MARGIN_RAMP_STEPS // 2)
    assert model.margin().item() == pytest.approx(0.55)
    model.steps.fill_(10 * MARGIN_RAMP_STEPS)
    assert model.margin().item() == pytest.approx(0.9)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_head_overfits_64_training_images(name):
    """About 25 s for all seven heads (so marked slow); each fit within 120 steps when written."""
    torch.set_num_threads(1)
    images, labels = load_split("train")
    x, y = to_float(images[:64]), labels[:64]
    torch.manual_seed(0)
    model = create_model(name, input_size=28, width=0.125)
    accuracy, step = fit_until_perfect(model, x, y, lr=3e-3, max_steps=300)
    assert accuracy == 1.0, f"{name}: {accuracy:.3f} after {step} steps"
