"""The deliverer command's parser: --json wherever data is printed, the exit statuses in the help."""

import argparse

import pytest

from deliverer.cli.parser import EXIT_STATUS, build_parser

# What runs until stopped or prints a demo, not data.
NO_DATA = {"run", "api", "demo"}


Commands = dict[tuple[str, ...], argparse.ArgumentParser]


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Commands:
    """Every command that runs something, by its words: ("endpoints", "add") and so on."""
    out: Commands = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= leaves(sub, (*path, name))
    return out or {path: parser}


def test_every_command_that_prints_data_takes_json() -> None:
    """Each command but run, api and demo has --json."""
    commands = leaves(build_parser())
    assert len(commands) > 15
    missing = [" ".join(p) for p, sub in commands.items() if p[0] not in NO_DATA
               and "--json" not in {s for a in sub._actions for s in a.option_strings}]
    assert missing == []


def test_the_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    """deliverer --help ends with what 0, 1, 2 and 130 mean."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert EXIT_STATUS.strip() in out
    assert all(f"  {code} " in EXIT_STATUS for code in ("0", "1", "2", "130"))
