"""``python -m bench gpu-check``: the quick CPU run, the guards, the estimate, the matmul rate."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import DataConfig, Profile, TrainConfig
from bench.errors import BenchError
from bench.gpu_check import (
    SECTIONS,
    CheckSettings,
    GpuCheck,
    _deadline,
    _OutOfTime,
    estimate_profile,
    matmul_rate,
    run_gpu_check,
    test_set_images,
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick --device cpu`` run shared by the tests that read its output (~20 s)."""
    out = tmp_path_factory.mktemp("gpu-check")
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["gpu-check", "--quick", "--device", "cpu", "--out", str(out)])
    finally:
        torch.set_num_threads(prev)
    return rc, out, json.loads((out / "gpu-check.json").read_text())


def test_quick_cpu_run_records_every_section(quick_run):
    rc, out, rep = quick_run
    assert rep["quick"] is True and rep["finished"] is True and rep["device"] == "cpu"
    assert set(rep["sections"]) == set(SECTIONS)
    for name, entry in rep["sections"].items():
        assert entry["status"] in ("ok", "skipped", "error"), name
        if entry["status"] == "skipped":
            assert entry["reason"].startswith("skipped: ")
        if entry["status"] == "error":
            assert isinstance(entry["error"], str) and entry["error"]
    for name in ("agreement_testsets", "agreement_models"):
        assert rep["sections"][name]["reason"].startswith("skipped: no CUDA")
    # Everything that needs no GPU really ran on the CPU.
    others = [n for n in SECTIONS if not n.startswith("agreement")]
    assert {n: rep["sections"][n]["status"] for n in others} == dict.fromkeys(others, "ok")
    assert rc == 0
    md = (out / "gpu-check.md").read_text()
    for name in SECTIONS:
        assert f"| {name} |" in md


def test_quick_rows_are_consistent(quick_run):
    _, _, rep = quick_run
    sec = rep["sections"]
    flops = {(r["model"], r["input_size"]): r for r in sec["flops"]["rows"]}
    bf16 = sec["matmul"]["bf16_tflops"] * 1e12
    rows = sec["throughput_eager"]["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {
        (m, p) for m in ("capsnet", "baseline-cnn", "convnet-maxpool", "convnet-k9")
        for p in ("bf16", "fp32")}
    for r in rows:
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
        f = flops[(r["model"], 40)]["flops_train_per_image"]
        assert r["tflops_train"] == pytest.approx(f * r["train_images_per_s"] / 1e12)
        if r["precision"] == "bf16":
            assert r["frac_matmul_train"] == pytest.approx(f * r["train_images_per_s"] / bf16)
    assert all(r["mode"] == "compiled" for r in sec["throughput_compiled"]["rows"])
    learn = sec["learning"]["rows"]
    assert [r["model"] for r in learn] == ["capsnet", "baseline-cnn", "convnet-maxpool",
                                           "convnet-k9"]
    assert all(r["steps"] == 6 and 0 <= r["val_accuracy"] <= 1 for r in learn)
    est = sec["estimate"]
    parts = ("data_s", "train_s", "val_s", "eval_s", "overhead_s", "extra_s")
    assert est["total_s"] == pytest.approx(sum(est[k] for k in parts))
    assert est["cells"] == 4 * 7 * 3 + 5 * 3  # paper: 4 models x 7 sizes x 3 seeds + MNIST table
    assert sec["generation"]["images"] == 100 * 2 and sec["generation"]["images_per_s"] > 0


def _tiny_profile() -> Profile:
    data = DataConfig(n_test=10, affnist_k=2, sweep_n=5, rotation_grid=(0, 10), scale_grid=(1.0,),
                      shear_grid=(0.0,), translate_grid=(0, 2), scramble_grids=(2,))
    train = TrainConfig(batch_size=10, epochs=1.0, min_steps=20, max_steps=50, val_size=100,
                        eval_every=20)
    return Profile(name="tiny", models=("capsnet", "convnet-k9"), sizes=(100, 1000), seeds=(0,),
                   data=data, train=train)


def test_estimate_matches_a_hand_computation():
    p = _tiny_profile()
    # step_budget: n=100 -> max(20, 100/10) = 20; n=1000 -> max(20, 100) capped at 50.
    # validations: ceil(20/20) + ceil(50/20) = 1 + 3 = 4, of 100 images each.
    # test images per cell: clean 10 + affnist 10*2 + sweeps 5*(2+1+1+2) + scramble 10
    # + displaced 10 = 80; data = those 80 once.
    assert sum(test_set_images(p.data, ["clean", "affnist", "sweep-rotation", "sweep-scale",
                                        "sweep-shear", "sweep-translate", "scramble-g2",
                                        "displaced"]).values()) == 80
    train = {("affnist", "capsnet"): 100.0, ("affnist", "convnet-k9"): 50.0}
    infer = {("affnist", "capsnet"): 200.0, ("affnist", "convnet-k9"): 100.0}
    est = estimate_profile(p, train, infer, gen_rate=40.0, cell_overhead_s=1.5, extra_s=0.5)
    capsnet = (20 + 50) * 10 / 100 + 4 * 100 / 200 + 2 * 80 / 200  # 7 + 2 + 0.8
    k9 = (20 + 50) * 10 / 50 + 4 * 100 / 100 + 2 * 80 / 100  # 14 + 4 + 1.6
    assert est["cells"] == 4
    assert est["train_s"] == pytest.approx(7 + 14)
    assert est["data_s"] == pytest.approx(80 / 40)
    assert est["total_s"] == pytest.approx(capsnet + k9 + 80 / 40 + 4 * 1.5 + 0.5)
    assert est["total_s"] == pytest.approx(37.9)
    with pytest.raises(BenchError, match="no measured rate for affnist/convnet-k9"):
        estimate_profile(p, {("affnist", "capsnet"): 1.0}, infer, gen_rate=1.0)


def test_matmul_rate_is_positive_on_the_cpu():
    rate = matmul_rate("cpu", torch.float32, n=64, warmup=1, repeats=2, trials=1)
    assert rate > 0 and rate != float("inf")


def test_without_cuda_and_quick_it_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BenchError, match="gpu-check needs CUDA; use --quick"):
        run_gpu_check(Path("unused"), quick=False, budget_s=None, device_name="auto")
    assert main(["gpu-check", "--device", "cpu", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "needs CUDA" in err


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path):
    check = GpuCheck(CheckSettings.quick_settings(torch.device("cpu")), torch.device("cpu"),
                     tmp_path, log=lambda _: None)

    def broken():
        raise RuntimeError("torch.compile is broken here")

    assert check.section("a", broken)["status"] == "error"
    assert check.section("b", lambda: {"summary": "fine"})["status"] == "ok"
    rep = json.loads((tmp_path / "gpu-check.json").read_text())
    assert rep["sections"]["a"]["error"] == "RuntimeError: torch.compile is broken here"
    assert rep["sections"]["b"]["summary"] == "fine"
    skipped = check.section("c", lambda: {}, need_s=1e9)
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("skipped: time budget")


def test_a_section_past_the_budget_is_interrupted(tmp_path):
    settings = dataclasses.replace(CheckSettings.quick_settings(torch.device("cpu")),
                                   budget_s=0.3, hard_grace_s=0.1)
    check = GpuCheck(settings, torch.device("cpu"), tmp_path, log=lambda _: None)
    entry = check.section("slow", lambda: time.sleep(5) or {})
    assert entry["status"] == "error" and "time budget reached" in entry["error"]
    assert entry["seconds"] < 2


def test_deadline_interrupts_a_long_call():
    start = time.perf_counter()
    with pytest.raises(_OutOfTime), _deadline(0.05):
        time.sleep(5)
    assert time.perf_counter() - start < 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(tmp_path):
    device = torch.device("cuda")
    check = GpuCheck(CheckSettings.quick_settings(device), device, tmp_path, log=lambda _: None)
    sets = check.agreement_testsets()
    assert sets["all_ok"], sets["rows"]
    warped = [r for r in sets["rows"] if "float_max_abs_diff" in r]
    assert warped and all(r["float_max_abs_diff"] <= 1e-5 for r in warped)
    assert all(r["params_equal"] and r["labels_equal"] for r in sets["rows"])
    models = check.agreement_models()
    assert models["all_ok"], models["rows"]
