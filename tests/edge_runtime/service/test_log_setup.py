"""Service log lines: time-stamped when plain; under systemd's journal, prefixed with the syslog priority."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

import pytest

from edge_runtime.service.log_setup import log_handler, syslog_priority

REPO_ROOT = Path(__file__).resolve().parents[3]
TIME_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture
def logger() -> Iterator:
    """attach(stream, environ): a logger of its own with the service's handler (pytest holds the root logger)."""
    log = logging.getLogger("d3ad.test")
    log.propagate = False
    ours: list[logging.Handler] = []

    def attach(stream: TextIO, environ: Mapping[str, str], level: int = logging.INFO) -> logging.Logger:
        while ours:  # only the handler attached before; pytest may have put its own capturing one here
            log.removeHandler(ours.pop())
        ours.append(log_handler(stream, environ))
        log.addHandler(ours[-1])
        log.setLevel(level)
        return log

    yield attach
    while ours:
        log.removeHandler(ours.pop())
    log.propagate = True
    log.setLevel(logging.NOTSET)


def log_every_level(log: logging.Logger) -> None:
    log.debug("frame 7 inspected")
    log.info("model 1.0.0 active")
    log.warning("broker unreachable")
    log.error("camera lost")


def test_plain_lines_keep_their_time_stamp(logger):
    stream = io.StringIO()
    log_every_level(logger(stream, {}))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, "DEBUG is below the level"
    assert all(TIME_STAMP.match(line) for line in lines), lines
    assert lines[1].endswith(" WARNING d3ad.test: broker unreachable")
    assert not any(line.startswith("<") for line in lines)


def test_under_the_journal_lines_carry_the_priority_and_no_time_stamp(logger):
    stream = io.StringIO()
    log_every_level(logger(stream, {"JOURNAL_STREAM": "8:12345"}, logging.DEBUG))
    assert stream.getvalue().splitlines() == [
        "<7>DEBUG d3ad.test: frame 7 inspected",
        "<6>INFO d3ad.test: model 1.0.0 active",
        "<4>WARNING d3ad.test: broker unreachable",
        "<3>ERROR d3ad.test: camera lost",
    ]


def test_every_line_of_a_traceback_gets_the_prefix(logger):
    stream = io.StringIO()
    log = logger(stream, {"JOURNAL_STREAM": "8:12345"})
    try:
        raise RuntimeError("inference hung")
    except RuntimeError:
        log.exception("frame loop stopped")
    lines = stream.getvalue().splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), lines
    assert lines[-1] == "<3>RuntimeError: inference hung"


def test_the_prefix_only_where_the_stream_is_the_journal(logger, tmp_path: Path):
    """JOURNAL_STREAM names the journal's stream; a file the service's stderr was sent to instead gets plain lines."""
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "file.log").open("w") as other:
        status = os.fstat(journal.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        logger(journal, environ).warning("to the journal")
        logger(other, environ).warning("to a file")
    assert (tmp_path / "journal").read_text() == "<4>WARNING d3ad.test: to the journal\n"
    assert TIME_STAMP.match((tmp_path / "file.log").read_text())


SERVICE_LOGGING = """
import logging, os, sys
from edge_runtime.service.log_setup import configure_logging
configure_logging("INFO")
logging.getLogger("d3ad.service").warning("camera lost")
logging.getLogger("d3ad.service").debug("not shown")
"""


@pytest.mark.parametrize("journal", [False, True], ids=["plain", "journal"])
def test_the_service_configures_the_root_logger_on_stderr(journal, tmp_path):
    """As `run` calls it, in a fresh process: stderr is a file here, named by JOURNAL_STREAM or not."""
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    with (tmp_path / "stderr").open("w") as stderr:
        if journal:
            status = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        subprocess.run([sys.executable, "-c", SERVICE_LOGGING], stderr=stderr, env=env, cwd=REPO_ROOT, check=True)
    text = (tmp_path / "stderr").read_text()
    if journal:
        assert text == "<4>WARNING d3ad.service: camera lost\n"
    else:
        assert TIME_STAMP.match(text) and text.endswith(" WARNING d3ad.service: camera lost\n"), text


def test_priorities_follow_syslog():
    assert [syslog_priority(level) for level in (50, 40, 30, 20, 10, 5)] == [2, 3, 4, 6, 7, 7]
    assert syslog_priority(logging.WARNING + 5) == 4, "a level between two takes the lower one's priority"


@pytest.mark.parametrize("journal", [False, True], ids=["plain", "journal"])
def test_why_run_refuses_to_start_is_an_error_in_the_journal(journal, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("bundle:\n  slot: /nowhere\nmode:\n  max_fps: -3\n")
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    with (tmp_path / "stderr").open("w") as stderr:
        if journal:
            status = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        command = [sys.executable, "-m", "edge_runtime", "run", "--config", str(config)]
        code = subprocess.run(command, stderr=stderr, env=env, cwd=REPO_ROOT, timeout=120).returncode
    assert code == 2
    lines = (tmp_path / "stderr").read_text().splitlines()
    expected = [
        f"{config}: 1 problem(s)",
        "  mode.max_fps: Input should be greater than or equal to 0 (got -3)",
        "error: refusing to start with an invalid config",
    ]
    assert lines == ([f"<3>{line}" for line in expected] if journal else expected)


def test_run_logs_through_the_service_setup():
    source = (REPO_ROOT / "edge_runtime" / "__main__.py").read_text()
    assert "configure_logging(config.log_level)" in source and "basicConfig" not in source
