"""The layers hold at run time too: what a command imports (docs/ARCHITECTURE.md).

``pyproject.toml``'s import-linter contracts check the import statements (``lint-imports``);
these run a fresh interpreter and look at ``sys.modules``: ``dwell replay`` and ``dwell
broker`` import no torch, ``dwell eval`` no Kafka client, the model core neither.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _imported(code: str) -> set[str]:
    """The top-level modules imported once ``code`` has run in a fresh interpreter."""
    script = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)
    return set(out.stdout.split())


def _after_parsing(argv: list[str]) -> str:
    """Code that builds ``dwell``'s parser and parses ``argv`` as ``main`` does, then imports
    what the command's code path imports before it talks to Kafka."""
    return ("import learner.cli as cli\n"
            f"argv = {argv!r}\n"
            "args = cli.build_parser(cli._command(argv)).parse_args(argv)\n"
            "cli.config_from_args(args) if hasattr(args, 'config_file') else None\n")


@pytest.mark.parametrize("argv", [["replay", "x.tsv"], ["broker", "status"]])
def test_replay_and_broker_import_no_torch(argv):
    code = _after_parsing(argv)
    if argv[0] == "replay":  # the replay's own code path
        code += ("import producers.replay, producers.readers, producers.pacing, "
                 "producers.shift, stream.admin\n")
    else:
        code += "import stream.broker\n"
    assert "torch" not in _imported(code)


def test_help_of_replay_imports_no_torch():
    code = ("import contextlib, io, learner.cli as cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['replay', '--help'])\n")
    assert "torch" not in _imported(code)


def test_eval_imports_no_kafka_client():
    code = _after_parsing(["eval", "--report-only"]) + (
        "import learner.evaluation.command, learner.evaluation.protocol, "
        "learner.evaluation.results_page, learner.evaluation.tuning, "
        "learner.evaluation.drift_drill, learner.machine\n"
        "learner.machine.machine_description()\n")
    imported = _imported(code)
    assert "torch" in imported  # the eval did load the model core
    assert not imported & {"kafka", "confluent_kafka", "prometheus_client"}


def test_the_model_core_imports_no_kafka_and_no_service():
    code = ("import importlib, pkgutil, learner.core as core\n"
            "for m in pkgutil.walk_packages(core.__path__, 'learner.core.'):\n"
            "    importlib.import_module(m.name)\n")
    imported = _imported(code)
    assert "torch" in imported  # every module of the core was imported
    assert not imported & {"kafka", "confluent_kafka", "prometheus_client", "stream",
                           "producers"}
