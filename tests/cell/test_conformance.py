"""The conformance check: stub models whose defect is known fail it on that property alone."""

from __future__ import annotations

import pytest
import torch

from bench.cell.conformance import PROPERTIES, check_model, failures
from bench.cli import main
from bench.config import load_profile
from bench.errors import BenchError
from bench.runner import stages as runner
from tests.tiny_profile import TINY

# A linear classifier on the pixels: it keeps the interface, and each defect below is one edit.
GOOD = '''
import os
import torch
from torch import nn
from bench.models.registry import Output, register_model

CLASSES = 10

class Stub(nn.Module):
    def __init__(self, input_size):
        super().__init__()
        self.fc = nn.Linear(input_size * input_size, CLASSES)
        INIT

    def forward(self, x, y=None):
        z = self.fc(x.flatten(1))
        return Output(z, torch.softmax(z, 1), z, None)

    def loss(self, out, x, y):
        return nn.functional.cross_entropy(out.logits, TARGET)

@register_model("NAME", family="convnet")
def factory(*, input_size, width):
    return Stub(input_size)
'''
DEFECTS = {
    "good": {},
    # 11 classes out: every consumer of the scores would read a wrong table
    "shape": {"CLASSES = 10": "CLASSES = 11"},
    # weights drawn from a generator of its own, seeded by the OS: every build differs
    "nondeterministic": {"INIT": "g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "
                                 "'little'))\n        nn.init.normal_(self.fc.weight, generator=g)"},
    # the loss reads labels that are not the batch's: it cannot fall
    "flat-loss": {"TARGET": "torch.randint(0, 10, y.shape)"},
    # a tensor the outputs depend on, outside state_dict(): a loaded model answers differently
    "unsaved": {"INIT": "self.shift = torch.randn(10)",
                "z = self.fc(x.flatten(1))": "z = self.fc(x.flatten(1)) + self.shift"},
}


def _source(name: str) -> str:
    text = GOOD
    for old, new in DEFECTS[name].items():
        text = text.replace(old, new)
    return text.replace("INIT", "pass").replace("TARGET", "y").replace("NAME", f"stub-{name}")


@pytest.fixture
def tiny(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    return f


@pytest.fixture
def stubs(external):
    for name in DEFECTS:
        external.module(f"stubs_{name.replace('-', '_')}", _source(name))
    return lambda name: f"stubs_{name.replace('-', '_')}:factory"


def _failed(found) -> dict[str, str]:
    return {f.prop: f.detail for f in failures(found)}


def test_a_model_that_keeps_the_interface_passes(stubs, tiny):
    found = check_model(stubs("good"), load_profile(str(tiny)))
    assert [f.prop for f in found] == list(PROPERTIES)
    assert _failed(found) == {}


@pytest.mark.parametrize(("defect", "prop", "words"), [
    ("shape", "shapes", "Output.logits has shape (4, 11), expected (4, 10)"),
    ("nondeterministic", "determinism", "two builds under seed 0 differ"),
    ("flat-loss", "training", "not below 0.9 x the start"),
    ("unsaved", "serialisation", "some state is outside state_dict()"),
])
def test_each_defect_fails_the_property_it_breaks(stubs, tiny, defect, prop, words):
    failed = _failed(check_model(stubs(defect), load_profile(str(tiny))))
    assert prop in failed and words in failed[prop]
    if defect != "shape":  # 11 classes also break the loss's targets; the others break one thing
        assert set(failed) == {prop}


def test_the_parameter_budget_is_the_profiles(stubs, tiny):
    profile = load_profile(str(tiny), ["model.max_params=100"])
    failed = _failed(check_model(stubs("good"), profile))
    # a linear map of 40 x 40 pixels to 10 classes: 16,010 parameters
    assert set(failed) == {"parameters"}
    assert "16,010 without a decoder" in failed["parameters"]
    assert "max_params = 100" in failed["parameters"]


def test_the_command_prints_one_line_per_failure(stubs, tiny, capsys):
    code = main(["models", "--check", stubs("nondeterministic"), "--profile", str(tiny)])
    out, err = capsys.readouterr()
    assert code == 2
    assert [line.split()[1] for line in out.splitlines() if "FAIL" in line] == ["determinism"]
    assert "fails the conformance check: determinism" in err
    assert main(["models", "--check", stubs("good"), "--profile", str(tiny)]) == 0


def test_run_refuses_an_external_model_that_fails(stubs, tiny, tmp_path):
    profile = load_profile(str(tiny), [f"models=['capsnet', '{stubs('flat-loss')}']"])
    run_dir = tmp_path / "run"
    with pytest.raises(BenchError, match="fails the conformance check.*training:"):
        runner.run(profile, ("data", "train"), run_dir, torch.device("cpu"), progress=False,
                   dry_run=True)
    assert not run_dir.exists()


def test_a_pass_is_remembered_per_source(stubs, tiny, tmp_path, monkeypatch):
    profile = load_profile(str(tiny), [f"models=['{stubs('good')}']"])
    run_dir = tmp_path / "run"
    runner.conformance(profile, run_dir, None, progress=False)
    assert (run_dir / "conformance.json").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("checked again")

    monkeypatch.setattr(runner, "check_model", refuse)
    runner.conformance(profile, run_dir, None, progress=False)  # unchanged: not checked again
    with pytest.raises(AssertionError, match="checked again"):  # another profile: checked
        runner.conformance(load_profile(str(tiny), [f"models=['{stubs('good')}']",
                                                    "train.lr=0.002"]), run_dir, None,
                           progress=False)
