"""Every setting of every subcommand is checked before anything starts: a bad value is one
line naming the flag and what is allowed, status 2, no traceback.

The cases are generated from the declared rules (:mod:`learner.bounds`), so that a new
setting or flag cannot skip them: a numeric one without a declared range fails here.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from learner import cli
from learner.bounds import Choices, Flag, Pattern, Range, bad_values, refused
from learner.service.config import Config, flag_name

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
#: Free-text settings: options and paths. Any other string setting declares Choices or a
#: Pattern (names, addresses); paths are checked when the command starts (test_startup).
FREE_TEXT = {"kafka_options", "kafka_options_file", "checkpoint_dir", "audit_log",
             "metrics_log"}
#: Settings that make a wrongly accepted value end fast (nothing to reach), never start work.
SAFE = ["--bootstrap", "127.0.0.1:1", "--connect-timeout-s", "0.1"]
SAFE_BY_COMMAND = {"learn": SAFE + ["--checkpoint-dir", "", "--metrics-port", "-1"],
                   "demo": SAFE + ["--external", "--metrics-port", "-1"],
                   "replay": SAFE + ["/nonexistent.tsv"]}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBPARSERS = _subparsers()


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings]


def _config_commands(name: str) -> list[str]:
    """The subcommands that take setting ``name`` as a flag."""
    return [cmd for cmd, p in SUBPARSERS.items()
            if any(a.dest == name for a in _options(p)) and cmd in SAFE_BY_COMMAND]


def _config_cases() -> list:
    cases = []
    for name, f in FIELDS.items():
        rule = f.metadata.get("rule")
        if rule is None:
            continue
        kind = type(f.default)
        values = refused(rule, kind)
        for command in _config_commands(name):
            cases += [pytest.param(command, name, v, id=f"{command} {flag_name(name)} {v}")
                      for v in values]
    return cases


def _own_flags() -> list[tuple[str, argparse.Action]]:
    """Each subcommand's flags that are not Config settings."""
    return [(cmd, a) for cmd, p in SUBPARSERS.items() for a in _options(p)
            if a.dest not in FIELDS]


def _required_positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [a.choices[0] if a.choices else "x" for a in parser._actions
            if not a.option_strings and a.nargs is None]


def _own_cases() -> list:
    return [pytest.param(cmd, action.option_strings[-1], value,
                         id=f"{cmd} {action.option_strings[-1]} {value}")
            for cmd, action in _own_flags() if isinstance(action.type, Flag)
            for value in bad_values(action.type)]


def _numbers_in(kind) -> bool:
    """Whether an argparse type reads plain numbers: int, float, or a closure over them."""
    if kind in (int, float):
        return True
    cells = getattr(kind, "__closure__", None) or ()
    return any(getattr(c, "cell_contents", None) in (int, float) for c in cells)


def test_every_numeric_setting_declares_a_range_and_every_name_its_choices():
    for name, f in FIELDS.items():
        kind, rule = type(f.default), f.metadata.get("rule")
        if kind in (int, float):
            assert isinstance(rule, Range), f"{name}: declare its Range in the field metadata"
            assert rule.contains(f.default), f"{name}: its default is out of its range"
        elif kind is str and name not in FREE_TEXT:
            assert isinstance(rule, Choices | Pattern), (
                f"{name}: declare its Choices or Pattern (or FREE_TEXT)")
            assert rule.problem(f.default) is None, name


def test_every_numeric_flag_of_every_subcommand_declares_a_range():
    for cmd, action in _own_flags():
        assert not _numbers_in(action.type), (
            f"dwell {cmd} {action.option_strings[-1]}: type=learner.bounds.Flag(...), "
            "with its Range")


@pytest.mark.parametrize(("command", "name", "value"), _config_cases())
def test_each_bad_setting_is_one_line_and_status_2(command, name, value, capsys):
    status = cli.main([command, *SAFE_BY_COMMAND[command], flag_name(name), value])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"dwell: error: {flag_name(name)} must be ")
    assert f"(got {value!r})" in err or f"(got {value})" in err


@pytest.mark.parametrize(("command", "option", "value"), _own_cases())
def test_each_bad_flag_of_a_subcommand_is_one_line_and_status_2(command, option, value,
                                                                 capsys):
    parser = cli.build_parser()
    positionals = _required_positionals(SUBPARSERS[command])
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([command, *positionals, option, value])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dwell {command}: error: argument {option}") and "must be" in err


def test_the_cases_cover_every_subcommand_with_numeric_flags():
    commands = {p.values[0] for p in _config_cases()} | {p.values[0] for p in _own_cases()}
    assert commands >= {"learn", "demo", "replay", "broker", "bench", "eval", "drift-eval"}


@pytest.mark.parametrize(("env", "expected"), [
    ({"DWELL_BATCH_SIZE": "0"}, "--batch-size must be between 1 and"),
    ({"DWELL_LR": "-1"}, "--lr must be a finite number > 0"),
    ({"DWELL_LR": "inf"}, "--lr must be a finite number > 0"),
    ({"DWELL_DIM": "many"}, "--dim (dim): cannot read 'many' as an integer"),
    ({"DWELL_DIM": "2.5"}, "--dim (dim): cannot read '2.5' as an integer"),
    ({"DWELL_LOSS": "mse"}, "--loss must be bce, "),
])
def test_environment_values_are_checked_alike(env, expected, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["learn", *SAFE_BY_COMMAND["learn"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dwell: error: {expected}") and len(err.splitlines()) == 1, err


def test_toml_values_are_checked_alike(tmp_path, capsys):
    toml = tmp_path / "dwell.toml"
    toml.write_text("[dwell]\nbatch_size = true\n")
    assert cli.main(["learn", *SAFE_BY_COMMAND["learn"], "--config", str(toml)]) == 2
    assert "--batch-size (batch_size): cannot read True" in capsys.readouterr().err
    toml.write_text("train_batch = 1.5\n")
    assert cli.main(["learn", *SAFE_BY_COMMAND["learn"], "--config", str(toml)]) == 2
    assert "--train-batch (train_batch): cannot read 1.5" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "expected"), [
    (["--max-users", "10"], "--max-users must be 0 (unbounded) or at least batch_size"),
    (["--meta", "ig"], "--meta ig trains vague events with IDL: it needs --loss idl"),
    (["--kafka-options", "sasl_plain_password=a,bcdef"], "--kafka-options item 2: expected"),
    (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
])
def test_settings_that_go_together_and_malformed_ones(args, expected, capsys):
    assert _status(["learn", *SAFE_BY_COMMAND["learn"], *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.splitlines()) == 1, err
    assert "bcdef" not in err


def _status(argv: list[str]) -> int:
    """``dwell ARGV``'s exit status, argparse's included."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_direct_construction_is_checked_too():
    from stream.errors import ConfigError

    with pytest.raises(ConfigError, match="--batch-size must be between 1 and"):
        Config(batch_size=0)
    with pytest.raises(ConfigError, match=r"--batch-size must be an integer \(got True\)"):
        Config(batch_size=True)
    with pytest.raises(ConfigError, match="--checkpoint-keep"):
        dataclasses.replace(Config(), checkpoint_keep=0)


@pytest.mark.parametrize("args", [
    ["learn", "--checkpoint-dir", "/proc/no-such-folder"],
    ["learn", "--checkpoint-dir", "", "--audit-log", "/proc/no/audit.jsonl"],
    ["learn", "--checkpoint-dir", "", "--metrics-log", "/proc/no/metrics.jsonl"],
    ["demo", "--external", "--checkpoint-dir", "/proc/no-such-folder"],
    ["replay", "/no/such/log.tsv"],
], ids=lambda a: " ".join(a))
def test_a_folder_or_file_that_cannot_be_used_is_one_line_and_status_2_before_kafka(args,
                                                                                    capsys):
    # checked before the cluster is asked: the bootstrap here answers nothing
    status = cli.main([*args, "--bootstrap", "127.0.0.1:1", "--connect-timeout-s", "30"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("dwell: error: ") and "Traceback" not in err[0]
    assert args[-1] in err[0] or "/proc/no" in err[0]


def test_a_writable_checkpoint_folder_is_made_before_the_start(tmp_path, capsys):
    folder = tmp_path / "a" / "b"
    status = cli.main(["learn", "--checkpoint-dir", str(folder), "--bootstrap", "127.0.0.1:1",
                       "--connect-timeout-s", "0.1"])
    assert status == 1  # got as far as the cluster, which is not there
    assert folder.is_dir()
