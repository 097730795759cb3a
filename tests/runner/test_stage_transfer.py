"""The transfer attack after the cells (bench.runner.stages.stage_transfer), on cells made here:
real models with fixed weights and PGD images chosen by hand, so the oracle is a plain forward
pass of each model on the *other* model's images (the next in the profile's list, the last on
the first's)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from bench.cell.files import CellFiles
from bench.cell.plan import planned_cells
from bench.config import AttackConfig
from bench.io import save_torch, write_json
from bench.models.registry import create_model
from bench.runner.stages import stage_transfer
from tests.tiny_profile import TINY


def _profile(tmp_path):
    from bench.config import load_profile

    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    p = load_profile(str(path))
    attack = AttackConfig(n=4, budgets=(0.1,), stated_budget=0.1)
    return dataclasses.replace(p, data=dataclasses.replace(p.data, attack=attack))


def test_each_model_is_scored_on_the_next_models_images(tmp_path):
    profile = _profile(tmp_path)
    run = tmp_path / "run"
    planned = planned_cells(profile, run, "cpu")
    torch.manual_seed(0)
    made = {}
    for pc in planned:
        c = pc.cell
        files = CellFiles(pc.folder)
        files.folder.mkdir(parents=True)
        model = create_model(c.model, input_size=40, width=profile.model.width).eval()
        spec = {"model": c.model, "canvas": 40, "width": profile.model.width, "train": {}}
        save_torch(files.checkpoint, {"spec": spec, "model": model.state_dict()})
        images = torch.rand(4, 1, 40, 40)  # "PGD images" made against this cell
        labels = torch.tensor([0, 1, 2, 3])
        save_torch(files.examples, {"adversarial/pgd-0.1": images.half(),
                                    "adversarial-labels/pgd-0.1": labels})
        write_json(files.eval_summary, {})
        made[(c.model, c.n)] = (model, images.half().float(), labels)
    rows = stage_transfer(profile, run, torch.device("cpu"), planned)
    table = pd.read_csv(run / "transfer.csv")
    assert rows == len(table) == 4 * len(planned)
    nxt = {"capsnet": "convnet-maxpool", "convnet-maxpool": "capsnet"}
    for (model, n), group in table.groupby(["model", "n"]):
        assert set(group["source"]) == {nxt[model]}
        target = made[(model, n)][0]
        _, images, labels = made[(nxt[model], n)]
        with torch.no_grad():
            expected = (target(images).scores.argmax(1) == labels).numpy()
        assert group.sort_values("index")["correct"].tolist() == expected.tolist()
        assert set(group["test_set"]) == {"transfer-0.1"}
    examples = torch.load(run / "adversarial_examples.pt", weights_only=True)
    for model in nxt:  # each model's largest n, first seed
        assert examples[f"cell/{model}"].tolist() == [max(profile.sizes), 0]
        assert torch.equal(examples[f"images/{model}"],
                           made[(model, max(profile.sizes))][1])


def test_no_attacked_cells_writes_nothing(tmp_path):
    profile = _profile(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    assert stage_transfer(profile, run, torch.device("cpu"), planned_cells(profile, run, "cpu")) == 0
    assert not (run / "transfer.csv").exists() and not (run / "adversarial_examples.pt").exists()
