"""Efficient-CapsNet at its published size: the exact parameter count, the layers, the contract."""

from __future__ import annotations

import pytest
import torch

from bench.cell.evaluate import load_model
from bench.cell.plan import TrainSpec
from bench.cell.train import train_cell, weights_hash
from bench.config import TrainConfig, load_profile
from bench.data.canvas import to_float
from bench.data.mnist import load_split
from bench.models.registry import count_parameters, create_model
from tests.overfit import fit_until_perfect


def _meta(name: str, input_size: int = 28, width: float = 1.0):
    with torch.device("meta"):
        return create_model(name, input_size=input_size, width=width)


def test_the_mnist_model_has_the_papers_161k_parameters():
    """Mazzia et al. 2021: 161K; the released Keras model's trainable count is 161,824."""
    model = _meta("efficient-capsnet")
    decoder = count_parameters(model.decoder)
    assert count_parameters(model) - decoder == 161_824
    # decoder: 160 -> 512 -> 1024 -> 784
    assert decoder == (160 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 784 + 784) == 1_411_344
    assert count_parameters(_meta("efficient-capsnet-norecon")) == 161_824


def test_layers_follow_the_released_graph():
    model = _meta("efficient-capsnet")
    convs = [m for m in model.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (32, (5, 5), (1, 1), (0, 0)),
        (64, (3, 3), (1, 1), (0, 0)),
        (64, (3, 3), (1, 1), (0, 0)),
        (128, (3, 3), (2, 2), (0, 0)),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.convs) == 4
    p = model.primary
    assert (p.in_channels, p.out_channels, p.groups, p.kernel_size) == (128, 128, 128, (9, 9))
    assert model.num_primary == 16
    assert tuple(model.W.shape) == (10, 16, 8 * 16) and tuple(model.log_priors.shape) == (10, 16)
    # at 40x40 the depthwise kernel covers the 15x15 map
    assert _meta("efficient-capsnet", 40).primary.kernel_size == (15, 15)


@pytest.mark.parametrize("name", ["efficient-capsnet", "efficient-capsnet-norecon"])
@pytest.mark.parametrize("input_size", [28, 40])
def test_output_contract(name, input_size, device):
    torch.manual_seed(0)
    model = create_model(name, input_size=input_size, width=0.125).to(device)
    x = torch.rand(3, 1, input_size, input_size, device=device)
    y = torch.tensor([1, 7, 3], device=device)
    out = model(x, y)
    assert out.logits.shape == (3, 10) and out.scores.shape == (3, 10)
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert out.features.shape == (3, 16)
    if name.endswith("norecon"):
        assert out.reconstruction is None
    else:
        assert out.reconstruction.shape == (3, input_size * input_size)
    loss = model.loss(out, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_overfits_64_training_images():
    """A few seconds at width 1/4."""
    torch.set_num_threads(1)
    images, labels = load_split("train")
    x, y = to_float(images[:64]), labels[:64]
    torch.manual_seed(0)
    model = create_model("efficient-capsnet", input_size=28, width=0.25)
    accuracy, step = fit_until_perfect(model, x, y, lr=3e-3, max_steps=200)
    assert accuracy == 1.0, f"{accuracy:.3f} after {step} steps"


def test_reconstruction_weight_is_the_released_0_392_per_pixel():
    torch.manual_seed(0)
    model = create_model("efficient-capsnet", input_size=28, width=0.125)
    assert model.recon_weight == pytest.approx(0.0005)  # 0.392 / 784, on the sum over pixels
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    out = model(x, y)
    margin_only = model.loss(out._replace(reconstruction=None), x, y)
    mse = (out.reconstruction - x.flatten(1)).pow(2).mean()
    torch.testing.assert_close(model.loss(out, x, y), margin_only + 0.392 * mse)


@pytest.mark.parametrize(
    "name", ["efficient-capsnet", pytest.param("efficient-capsnet-norecon", marks=pytest.mark.slow)]
)
def test_the_trainer_trains_and_hashes_it(name, tmp_path):
    """bench.cell.train (channels_last, deterministic, the weights hash) for a few steps."""
    cfg = TrainConfig(steps=4, val_size=64, eval_every=2, batch_size=16, select="last",
                      lr_schedule="cosine")
    summary = train_cell(TrainSpec(name, 100, 0, width=0.125, train=cfg), tmp_path, "cpu",
                         progress=False)
    assert summary["weights_hash"]
    # the evaluation loads the checkpoint into a freshly built model: the same weights
    model = load_model(tmp_path, "cpu")
    assert weights_hash(model) == summary["weights_hash"]


def test_the_efficient_profile_trains_it_at_width_1_and_on_28x28_mnist():
    profile = load_profile("efficient")
    assert profile.models == ("efficient-capsnet",) and profile.model.width == 1.0
    assert profile.mnist_table is not None and profile.mnist_table.models == ("efficient-capsnet",)
    assert (profile.train.lr, profile.train.batch_size) == (5e-4, 16)


def test_the_efficient_paper_profile_has_the_released_settings():
    # EscVM/Efficient-CapsNet's released config: Adam 5e-4, batch 16, x0.97 per epoch, 150 epochs
    profile = load_profile("efficient-paper")
    assert profile.mnist_table is not None and profile.mnist_table.models == ("efficient-capsnet",)
    t = profile.train
    assert (t.lr, t.batch_size, t.lr_decay, t.lr_schedule) == (5e-4, 16, 0.97, "exponential")
    assert t.decay_steps * 16 == 60_000  # one epoch of MNIST's training split
    assert t.steps * 16 == 150 * 60_000
