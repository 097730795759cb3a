"""The command line explains itself: the bare command lists every command with an example."""

import pytest

from bench.cli import build_parser, main


def test_bare_command_lists_every_command_and_an_example(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"run", "data", "train", "models", "throughput", "report", "check",
                             "gpu-check"}
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
