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
