"""Every registered model: the shared contract, parameter counts, FLOPs, and that it can learn."""

from __future__ import annotations

import pytest
import torch

from bench.cli import main
from bench.data.canvas import to_float
from bench.data.mnist import load_split
from bench.errors import BenchError
from bench.flops import flops_per_image
from bench.models.convnet_maxpool import TOLERANCE
from bench.models.registry import count_parameters, create_model, model_names
from tests.overfit import fit_until_perfect

MAIN = ["capsnet", "baseline-cnn", "convnet-maxpool", "convnet-k9"]
CAPSNETS = ["capsnet", "capsnet-r1", "capsnet-r1-norecon", "capsnet-r3-norecon"]


def _meta_params(name: str, input_size: int, width: float) -> int:
    with torch.device("meta"):
        return count_parameters(create_model(name, input_size=input_size, width=width))


def test_registry_lists_every_model_and_rejects_unknown_names():
    assert set(MAIN + CAPSNETS) <= set(model_names())
    with pytest.raises(BenchError, match="unknown model 'capsnet-9'.*capsnet"):
        create_model("capsnet-9")


def test_baseline_cnn_has_the_papers_35_4m_parameters():
    """Sabour et al. Section 5: 3 convs 5x5 (256, 256, 128), FC 328, FC 192, 10 -> 35.4M."""
    assert _meta_params("baseline-cnn", 28, 1.0) == 35_445_522


def test_convnet_k9_mirrors_the_capsnet_without_its_capsule_layer():
    assert _meta_params("convnet-k9", 28, 1.0) == 6_805_994
    with torch.device("meta"):
        m = create_model("convnet-k9", input_size=28, width=1.0)
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (256, (9, 9), (1, 1)),
        (256, (9, 9), (2, 2)),
    ]
    assert not any(isinstance(l, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for l in m.modules())


@pytest.mark.parametrize("input_size,width", [(28, 1.0), (40, 1.0), (40, 0.25), (40, 0.125)])
def test_maxpool_convnet_is_within_5_percent_of_the_capsnet_classifier(input_size, width):
    """Matched to the CapsNet without its decoder: the registered no-decoder variant's count."""
    caps = _meta_params("capsnet-r3-norecon", input_size, width)
    conv = _meta_params("convnet-maxpool", input_size, width)
    assert abs(conv - caps) <= TOLERANCE * caps
    with torch.device("meta"):
        m = create_model("convnet-maxpool", input_size=input_size, width=width)
    assert sum(isinstance(l, torch.nn.MaxPool2d) for l in m.modules()) == 2
    assert sum(isinstance(l, torch.nn.Dropout) for l in m.modules()) == 1


def test_models_table_counts_the_capsnet_classifier_without_its_decoder(capsys):
    """Paper, Section 5: 8.2M parameters, 6.8M without the reconstruction subnetwork."""
    assert main(["models", "--input-size", "28", "--width", "1"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.split()[:1] == ["capsnet"])
    assert "8,215,568" in line and "6,804,224" in line


@pytest.mark.parametrize("name", MAIN + CAPSNETS[1:])
def test_output_contract(name, device):
    torch.manual_seed(0)
    model = create_model(name, input_size=40, width=0.125).to(device)
    x = torch.rand(3, 1, 40, 40, device=device)
    y = torch.tensor([1, 7, 3], device=device)
    out = model(x, y)
    assert out.logits.shape == (3, 10) and out.scores.shape == (3, 10)
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert out.features.dim() == 2 and out.features.shape[0] == 3
    if name.startswith("capsnet"):
        assert out.features.shape[1] == 16
        assert (out.reconstruction is None) == name.endswith("norecon")
    else:
        assert torch.allclose(out.scores.sum(1), torch.ones(3, device=device), atol=1e-5)
        assert out.reconstruction is None
    loss = model.loss(out, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MAIN + ["capsnet-r1-norecon"])
def test_each_model_overfits_64_training_images(name):
    """A model that cannot fit 64 images perfectly has a bug (wrong loss, masking, routing)."""
    torch.set_num_threads(1)  # small models: one thread is as fast and steadier on shared cores
    # The baseline's dropout acts on its penultimate layer, 12 units at width 1/16: too few to
    # fit 64 images exactly in a short budget, so it gets 1/8 (24 units).
    width = 0.125 if name == "baseline-cnn" else 0.0625
    images, labels = load_split("train")
    x, y = to_float(images[:64]), labels[:64]
    torch.manual_seed(0)
    model = create_model(name, input_size=28, width=width)
    accuracy, step = fit_until_perfect(model, x, y, lr=1e-3, max_steps=200)
    assert accuracy == 1.0, f"{name}: {accuracy:.3f} after {step} steps"


def test_flops_match_the_closed_form_for_convnet_k9():
    # conv1 20x20x256 outputs x 81 MACs, conv2 6x6x256 x (81x256) MACs, FC 9216x160, FC 160x10
    macs = 20 * 20 * 256 * 81 + 6 * 6 * 256 * 81 * 256 + 9216 * 160 + 160 * 10
    assert flops_per_image("convnet-k9", 28, 1.0) == 2 * macs
    # backward: twice the forward, except that conv1 needs no gradient for the input image
    train = flops_per_image("convnet-k9", 28, 1.0, train=True)
    assert train == 3 * 2 * macs - 2 * 20 * 20 * 256 * 81


def test_capsnet_flops_count_the_routing():
    r1 = flops_per_image("capsnet-r1-norecon", 28, 1.0)
    r3 = flops_per_image("capsnet-r3-norecon", 28, 1.0)
    # two more weighted sums and two agreements: 4 x (10 x 1152 x 16) multiply-adds
    assert r3 - r1 == 2 * 4 * 10 * 1152 * 16


def test_models_table_cli(capsys):
    assert main(["models", "--input-size", "28"]) == 0
    text = capsys.readouterr().out
    assert "8,215,568" in text and "35,445,522" in text and "8.2M" in text and "35.4M" in text
