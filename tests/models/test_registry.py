"""The model registry's interface: families, entry points of installed packages, module:factory."""

from __future__ import annotations

import pytest
import torch

from bench.config import load_profile
from bench.errors import BenchError
from bench.models import registry
from bench.models.registry import create_model, model_info, model_names, register_model

# A registered factory in a module of its own: a linear classifier on the pixels.
STUB = '''
import torch
from torch import nn
from bench.models.registry import Output, register_model

class Stub(nn.Module):
    def __init__(self, input_size):
        super().__init__()
        self.fc = nn.Linear(input_size * input_size, 10)

    def forward(self, x, y=None):
        z = self.fc(x.flatten(1))
        return Output(z, torch.softmax(z, 1), z, None)

    def loss(self, out, x, y):
        return nn.functional.cross_entropy(out.logits, y)

@register_model("NAME", family="convnet")
def factory(*, input_size, width):
    return Stub(input_size)
'''


def test_suite_models_carry_their_family():
    assert model_info("capsnet").family == "capsule"
    assert model_info("efficient-capsnet").family == "capsule"
    assert model_info("convnet-maxpool").family == "convnet"
    assert model_info("head-em").family == "head"
    info = model_info("capsnet")
    assert not info.external and info.package == registry.SUITE_PACKAGE


def test_a_family_outside_the_three_is_refused():
    with pytest.raises(BenchError, match="family must be one of capsule, convnet, head"):
        register_model("x", family="transformer")


def test_module_factory_names_a_registered_factory(external):
    external.module("stubmods.linear", STUB.replace("NAME", "stub-linear"))
    model = create_model("stubmods.linear:factory", input_size=28, width=1.0)
    assert model.fc.in_features == 28 * 28
    info = model_info("stubmods.linear:factory")
    assert info.external and info.family == "convnet" and info.module == "stubmods.linear"
    assert info.package is None and info.version is None  # a folder on sys.path, not installed
    # its own decorator made the registered name usable too, and listed
    assert "stub-linear" in model_names()


def test_module_factory_errors_are_one_line(external):
    external.module("stubmods.plain", "def factory(*, input_size, width):\n    return None\n")
    with pytest.raises(BenchError, match="not a registered factory: decorate it"):
        create_model("stubmods.plain:factory")
    with pytest.raises(BenchError, match="cannot import nosuchmodule"):
        create_model("nosuchmodule:factory")
    with pytest.raises(BenchError, match="has no 'other'"):
        create_model("stubmods.plain:other")


def test_an_installed_entry_point_is_a_model_name(external):
    external.module("stubpkg.net", STUB.replace("NAME", "stub-ep"))
    assert "stub-ep" not in model_names()
    external.install("stub-dist", "1.2.3", {"stub-ep": "stubpkg.net:factory"})
    assert "stub-ep" in model_names()  # listed before anything is imported
    info = model_info("stub-ep")
    assert (info.package, info.version, info.family) == ("stub-dist", "1.2.3", "convnet")
    assert info.entry_point == "capsbench.models:stub-ep"
    out = create_model("stub-ep", input_size=40)(torch.rand(2, 1, 40, 40))
    assert out.logits.shape == (2, 10)
    # a profile and --set accept it where a model name goes
    assert load_profile("smoke", ["models=['capsnet', 'stub-ep']"]).models[-1] == "stub-ep"


def test_an_entry_point_must_name_its_own_model(external):
    external.module("stubpkg2.net", STUB.replace("NAME", "stub-real-name"))
    external.install("stub-dist2", "0.1", {"stub-other": "stubpkg2.net:factory"})
    with pytest.raises(BenchError, match="registered as 'stub-real-name', not 'stub-other'"):
        model_info("stub-other")


def test_an_entry_point_may_not_take_a_suite_name(external):
    external.module("stubpkg3.net", STUB.replace("NAME", "stub-3"))
    external.install("stub-dist3", "0.1", {"capsnet": "stubpkg3.net:factory"})
    with pytest.raises(BenchError, match="has the name of one of the suite's models"):
        model_info("capsnet")


def test_a_broken_plugin_breaks_only_its_own_name(external):
    external.module("stubpkg4.net", "raise ImportError('needs a library that is missing')\n")
    external.install("stub-dist4", "0.1", {"stub-broken": "stubpkg4.net:factory"})
    assert "stub-broken" in model_names()
    create_model("capsnet", input_size=28, width=0.0625)  # the suite is unaffected
    with pytest.raises(BenchError, match="stub-broken.*cannot load.*needs a library"):
        create_model("stub-broken")


def test_unknown_names_say_how_to_add_one():
    with pytest.raises(BenchError, match="unknown model 'no-such-net'.*needs that package installed"):
        create_model("no-such-net")
