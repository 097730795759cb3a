"""The command line explains itself: the bare command lists every command with an example."""

import pytest

from bench.cli import build_parser, main


def test_bare_command_lists_every_command_and_an_example(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"run", "profiles", "data", "train", "models", "throughput", "report",
                             "check", "gpu-check", "tune"}
    for name, sub in commands.items():
        assert name in out
        assert sub.description  # every command has a one-line description
    assert "python -m bench run all" in out


def test_run_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for stage in ("data", "train", "eval", "throughput", "report", "all"):
        assert f"\n  {stage} " in out


def test_data_describe_affnist_prints_ranges_sources_and_our_choices(capsys):
    # The ranges come from the profile (here overridden), the sources and choices are fixed text.
    assert main(["data", "--profile", "smoke", "--describe-affnist",
                 "--set", "data.affine.rotation_deg=15", "--set", "data.affine.scale_max=1.25"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("- ")]
    by_item = {ln[2:].split(":", 1)[0]: ln for ln in lines}
    assert "ours uniform in +-15 degrees" in by_item["rotation"]
    assert "TFF: -20..20 degrees" in by_item["rotation"]
    assert "ours a factor uniform in +-0.2" in by_item["shear"]
    assert "[0.8, 1.25]" in by_item["scale"] and "log-uniform" in by_item["scale"]
    for item in ("translation (our choice)", "shear axis (our choice)",
                 "composition order (our choice)"):
        assert item in by_item, item
    assert "bounding box" in by_item["translation (our choice)"]
    sources = by_item["sources"]
    assert "tff.simulation.datasets.emnist.get_infinite" in sources
    assert "renata-turkes/turkevs2022on" in sources
    assert "https://www.cs.toronto.edu/~tijmen/affNIST/" in sources
    assert len(lines) == 7  # one line per item, nothing built


def test_data_describe_affnist_prints_the_scale_distribution_and_shear_axis(capsys):
    assert main(["data", "--profile", "smoke", "--describe-affnist"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("- ")]
    by_item = {ln[2:].split(":", 1)[0]: ln for ln in lines}
    assert "ours uniform in [0.8, 1.2]" in by_item["scale"]  # the defaults
    assert "data.affine.scale_distribution" in by_item["scale"]
    assert "(our choice): x, horizontal" in by_item["shear axis (our choice)"]
    assert main(["data", "--profile", "smoke", "--describe-affnist",
                 "--set", "data.affine.scale_distribution=log-uniform",
                 "--set", "data.affine.shear_axis=y"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("- ")]
    by_item = {ln[2:].split(":", 1)[0]: ln for ln in lines}
    assert "ours log-uniform in [0.8, 1.2]" in by_item["scale"]
    assert "(our choice): y, vertical, y' = y - s * (x - cx)" in by_item["shear axis (our choice)"]
    assert "data.affine.shear_axis" in by_item["shear axis (our choice)"]


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("scale_distribution", "gaussian", "uniform or log-uniform"),
    ("shear_axis", "xy", "x or y"),
])
def test_bad_affine_choice_is_a_one_line_error_naming_the_key(capsys, key, value, allowed):
    assert main(["data", "--profile", "smoke", "--describe-affnist",
                 "--set", f"data.affine.{key}={value}"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"'data.affine.{key}' must be {allowed}, got '{value}'" in err


def test_profiles_lists_every_packaged_profile_with_its_cells_and_test_sets(capsys):
    """Oracle: the TOML files themselves (tomllib) for the names and, for smoke, the cells worked
    by hand (4 models x 2 sizes x 2 seeds = 16) and its test sets (every default kind: the
    scramble grids [2, 3] of the defaults, no affnist-real)."""
    import tomllib

    from bench.config import PROFILES_DIR

    assert main(["profiles", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    names = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
    listed = [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == names
    smoke = tomllib.loads((PROFILES_DIR / "smoke.toml").read_text())
    assert len(smoke["models"]) * len(smoke["sizes"]) * len(smoke["seeds"]) == 16
    assert "smoke: 16 cells" in out
    block = out.split("smoke: 16 cells")[1].split("\n")[1:3]
    assert block[0].startswith("  affnist (40x40): models capsnet, baseline-cnn, convnet-maxpool, "
                               "convnet-k9; n = 100, 300; 2 seeds")
    assert block[1] == ("    test sets: clean, affnist, sweep-rotation, sweep-scale, sweep-shear, "
                        "sweep-translate, scramble-g2, scramble-g3, displaced, overlap")


def test_the_plan_of_a_fresh_run_trains_every_cell_and_builds_every_set():
    from bench.config import load_profile
    from bench.runner.todo import fresh_plan

    plan = fresh_plan(load_profile("smoke"))
    assert len(plan.train) == 16 and not plan.evaluate and not plan.reuse
    assert plan.sets_build == {"affnist": ["clean", "affnist", "sweep-rotation", "sweep-scale",
                                           "sweep-shear", "sweep-translate", "scramble-g2",
                                           "scramble-g3", "displaced", "overlap"]}
    assert plan.throughput and plan.report
