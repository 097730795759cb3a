"""The cache key of an external model's cells: its package, version and source; the suite's
cells keep theirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cell import plan as the_plan
from bench.cell.plan import PACKAGE_DIR, TRAIN_CODE, Cell, source_hash
from bench.config import load_profile
from bench.io import stable_hash
from tests.tiny_profile import TINY

SOURCE = '''
import torch
from torch import nn
from bench.models.registry import Output, register_model

SCALE = 1.0  # a constant that decides the weights

class Stub(nn.Module):
    def __init__(self, input_size):
        super().__init__()
        self.fc = nn.Linear(input_size * input_size, 10)

    def forward(self, x, y=None):
        z = SCALE * self.fc(x.flatten(1))
        return Output(z, torch.softmax(z, 1), z, None)

    def loss(self, out, x, y):
        return nn.functional.cross_entropy(out.logits, y)

@register_model("stub-keyed", family="convnet")
def factory(*, input_size, width):
    return Stub(input_size)
'''


@pytest.fixture
def profile(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY.replace('models = ["capsnet", "convnet-maxpool"]',
                              'models = ["capsnet", "convnet-maxpool", "stub-keyed"]'))
    return f


def _expected_suite_key(profile, cell: Cell) -> str:
    """The key as the plan states it, computed here from its parts: spec, the hash of
    TRAIN_CODE's source, the device type."""
    spec = the_plan.spec_for(profile, cell).to_dict()
    return stable_hash(spec, source_hash(PACKAGE_DIR, TRAIN_CODE), "cpu")[:10]


def test_external_source_and_version_change_its_key_and_no_other(external, profile, tmp_path):
    suite = load_profile("smoke")
    suite_cell = the_plan.cells(suite)[0]
    before = the_plan.cell_dir(tmp_path, suite, suite_cell, "cpu")
    assert before.name.endswith(_expected_suite_key(suite, suite_cell))

    module = external.module("keyed.net", SOURCE)
    external.install("keyed-dist", "0.1.0", {"stub-keyed": "keyed.net:factory"})
    p = load_profile(str(profile))
    ext_cell = Cell("affnist", "stub-keyed", 20, 0)
    caps_cell = Cell("affnist", "capsnet", 20, 0)
    key = the_plan.cell_dir(tmp_path, p, ext_cell, "cpu")
    caps = the_plan.cell_dir(tmp_path, p, caps_cell, "cpu")
    assert caps.name.endswith(_expected_suite_key(p, caps_cell))
    assert the_plan.cell_dir(tmp_path, suite, suite_cell, "cpu") == before
    # the external key is not the suite's rule: its source is in it
    assert not key.name.endswith(_expected_suite_key(p, ext_cell))

    # a comment and a docstring do not decide weights: same key
    module.write_text(SOURCE.replace("class Stub(nn.Module):",
                                     'class Stub(nn.Module):\n    """A stub."""  # comment'))
    assert the_plan.cell_dir(tmp_path, p, ext_cell, "cpu") == key
    # a constant does: a new key; the suite's cells keep theirs
    module.write_text(SOURCE.replace("SCALE = 1.0", "SCALE = 2.0"))
    changed = the_plan.cell_dir(tmp_path, p, ext_cell, "cpu")
    assert changed != key
    assert the_plan.cell_dir(tmp_path, p, caps_cell, "cpu") == caps
    assert the_plan.cell_dir(tmp_path, suite, suite_cell, "cpu") == before
    # a new version of the package: a new key
    external.install("keyed-dist", "0.2.0", {"stub-keyed": "keyed.net:factory"})
    assert the_plan.cell_dir(tmp_path, p, ext_cell, "cpu") not in (key, changed)


def test_every_file_of_the_package_is_in_the_key(external, profile, tmp_path):
    """A helper module of the package, not the factory's module, changes the key too."""
    helper = external.module("keyed2.layers", "WIDTH = 3\n")
    external.module("keyed2.net", SOURCE)
    external.install("keyed-dist2", "0.1.0", {"stub-keyed": "keyed2.net:factory"})
    p = load_profile(str(profile))
    cell = Cell("affnist", "stub-keyed", 20, 0)
    key = the_plan.cell_dir(tmp_path, p, cell, "cpu")
    helper.write_text("WIDTH = 4\n")
    assert the_plan.cell_dir(tmp_path, p, cell, "cpu") != key
    assert {f.name for f in the_plan.model_info("stub-keyed").source_files()} == {
        "__init__.py", "layers.py", "net.py"}
    assert all(isinstance(f, Path) for f in the_plan.model_info("stub-keyed").source_files())
