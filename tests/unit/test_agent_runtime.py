"""The agent's runtime pieces without borg: stopping a process, watching stdin, writing output."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.waiting import wait_until
from tests.integration.agent_support import load_agent

agent = load_agent()

# A child that ignores SIGINT (and optionally SIGTERM) and says so once its handlers are set.
STUBBORN_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
signal.alarm(60)  # never outlive a broken test
while True:
    signal.pause()
"""


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):  # the test may have closed it already
            os.close(fd)


class WatchedPipe:
    """A pipe standing in for the agent's stdin, with a StdinWatcher reading it."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.session = agent.Session("create", RecordingOutput())
        self.watcher = agent.StdinWatcher(self.read_end, self.session)
        self.watcher.start()

    def close_write_end(self) -> dict[str, str]:
        """EOF for the watcher; returns once it has seen it (and its thread is done with the fd)."""
        with contextlib.suppress(OSError):  # the test may have closed it already
            os.close(self.write_end)
        return wait_until(lambda: self.session.stop_reason, "the watcher to notice EOF", 5)


@pytest.fixture
def watched_pipe() -> Iterator[WatchedPipe]:
    watched = WatchedPipe()
    yield watched
    watched.close_write_end()
    os.close(watched.read_end)  # only now: a thread still reading could steal a reused fd


def start_stubborn_child(mode: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", STUBBORN_CHILD, mode], stdout=subprocess.PIPE, start_new_session=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    return child


def test_a_process_that_ignores_sigint_gets_sigterm() -> None:
    child = start_stubborn_child("honour-term")
    started = time.monotonic()
    agent.stop_process(child, 0.3, 5.0)
    assert child.returncode == -15
    assert time.monotonic() - started < 4


def test_a_process_that_ignores_sigint_and_sigterm_gets_sigkill() -> None:
    child = start_stubborn_child("ignore-term")
    agent.stop_process(child, 0.2, 0.2)
    assert child.returncode == -9


def test_a_process_that_already_exited_is_left_alone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    agent.stop_process(child, 0.1, 0.1)
    assert child.returncode == 0


class RecordingOutput:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def write(self, event: dict[str, Any]) -> bool:
        self.events.append(event)
        return True


def test_stdin_watcher_delivers_the_first_line_then_reports_eof(watched_pipe: WatchedPipe) -> None:
    os.write(watched_pipe.write_end, b'{"protocol": 1}\nmore data that is ignored\n')
    assert watched_pipe.watcher.job_line(5) == b'{"protocol": 1}'
    assert watched_pipe.session.stop_reason is None
    assert watched_pipe.close_write_end()["msgid"] == "CoordinatorGone"


def test_stdin_watcher_times_out_without_a_job_line(watched_pipe: WatchedPipe) -> None:
    os.write(watched_pipe.write_end, b'{"protocol": 1')  # no newline yet
    with pytest.raises(agent.Rejected, match="no job line within"):
        watched_pipe.watcher.job_line(0.2)


def test_stdin_watcher_stops_reading_an_overlong_line(watched_pipe: WatchedPipe) -> None:
    chunk = b"x" * 65536
    written = 0
    while written <= agent.JOB_LINE_LIMIT:
        written += os.write(watched_pipe.write_end, chunk)
    line = watched_pipe.watcher.job_line(5)
    with pytest.raises(agent.Rejected, match="longer than"):
        agent.parse_job_line(line)


def test_json_lines_output_reports_a_broken_pipe(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    output = agent.JsonLinesOutput(write_end)
    assert output.write({"type": "log", "message": "a\nb \udce9"})
    line = os.read(read_end, 65536)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line)["message"] == "a\nb \udce9"
    os.close(read_end)
    assert not output.write({"type": "log", "message": "nobody reads this"})
    assert not output.write({"type": "result"})


def test_a_broken_output_asks_the_session_to_stop(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.close(read_end)
    session = agent.Session("create", agent.JsonLinesOutput(write_end))
    session.emit({"type": "progress"})
    assert session.stop_reason["msgid"] == "CoordinatorGone"


def test_session_counts_warnings_and_passes_progress_on_for_create_only() -> None:
    output = RecordingOutput()
    session = agent.Session("create", output)
    session.handle_record({"type": "archive_progress", "nfiles": 3, "time": 1.0})
    session.handle_record({"type": "log_message", "levelname": "WARNING", "message": "w"})
    session.handle_record({"type": "log_message", "levelname": "ERROR", "message": "e"})
    session.handle_record({"type": "text", "message": "plain"})
    assert [e["type"] for e in output.events] == ["progress", "log", "log", "log"]
    assert session.warnings == 2
    listing = agent.Session("list", RecordingOutput())
    listing.handle_record({"type": "archive_progress", "nfiles": 3, "time": 1.0})
    assert listing.output.events == []


@pytest.mark.parametrize(
    ("ok", "borg_rc", "rejected", "code"),
    [
        (True, 0, False, 0),
        (True, None, False, 0),
        (True, 1, False, 1),
        (False, 1, False, 2),
        (False, 2, False, 2),
        (False, None, True, 3),
    ],
)
def test_exit_codes(ok: bool, borg_rc: int | None, rejected: bool, code: int) -> None:
    assert agent.exit_code(agent.Outcome({}, ok=ok), borg_rc, rejected) == code


# -- the human output ----------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


PROGRESS = {
    "type": "progress",
    "nfiles": 12,
    "original_size": 2_500_000,
    "compressed_size": 1,
    "deduplicated_size": 1200,
    "path": "home/new\nline",
}


def test_human_output_updates_one_line_on_a_terminal() -> None:
    terminal, errors = FakeTerminal(), io.StringIO()
    output = agent.HumanOutput(terminal, errors)
    output.write(PROGRESS)
    output.write({**PROGRESS, "nfiles": 13})
    output.write({"type": "log", "level": "warning", "msgid": "Perm", "message": "denied"})
    text = terminal.getvalue()
    assert text.count("\r\x1b[K") == 2
    assert "13 files, 2.50 MB read, 1.20 kB new  home/new\\nline" in text
    assert text.endswith("\n")  # the progress line ends before the warning is shown
    assert errors.getvalue() == "warning [Perm]: denied\n"


def test_human_output_prints_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    output = agent.HumanOutput(stream, io.StringIO())
    output.write(PROGRESS)
    output.write(PROGRESS)  # within a second of the first: not repeated
    assert stream.getvalue().splitlines() == [
        "12 files, 2.50 MB read, 1.20 kB new  home/new\\nline"
    ]


def test_human_summary_of_a_failure_names_the_field() -> None:
    result = {
        "type": "result",
        "operation": "create",
        "ok": False,
        "rc": 3,
        "duration": 0.01,
        "warnings": 0,
        "data": {},
        "error": {
            "msgid": "JobRejected",
            "field": "paths[0]",
            "message": "must be an absolute path",
        },
    }
    assert agent.summary_lines(result) == [
        "FAILED: JobRejected (paths[0]): must be an absolute path",
        "create finished in 0.0 s, exit code 3",
    ]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 kB"),
        (4_680, "4.68 kB"),
        (3.2e12, "3.20 TB"),
        (5e15, "5000.00 TB"),
    ],
)
def test_human_sizes(size: float, text: str) -> None:
    assert agent.human_size(size) == text


def test_printable_escapes_control_characters_and_bad_bytes() -> None:
    assert agent.printable("a\nb\x1b[2J caf\udce9") == "a\\nb\\x1b[2J caf\\xe9"


# -- an unexpected exception ---------------------------------------------------------------------

LEAKY_MESSAGE = "job data that must not reach stdout: /home/zoe/secret-project"


def explode(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(LEAKY_MESSAGE)


@pytest.fixture
def agent_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """main() run inside the test: no signal handlers of its own, no host policy file."""
    monkeypatch.setattr(agent, "install_stop_signals", lambda _session: None)
    monkeypatch.setattr(agent, "DEFAULT_POLICY_PATH", str(tmp_path / "absent.json"))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.usefixtures("agent_in_process")
def test_an_exception_before_hello_is_a_failed_result_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(agent, "validate_job", explode)
    assert agent.main(["hello", "--json"]) == 2
    captured = capfd.readouterr()
    events = json_lines(captured.out)
    assert [e["type"] for e in events] == ["hello", "result"]
    assert events[0]["borg_version"] == ""
    result = events[-1]
    assert (result["ok"], result["rc"], result["borg_rc"]) == (False, 2, None)
    assert result["error"]["msgid"] == "AgentError"
    assert "RuntimeError" in result["error"]["message"]
    assert "secret-project" not in captured.out
    assert "Traceback" in captured.err
    assert LEAKY_MESSAGE in captured.err


@pytest.mark.usefixtures("agent_in_process")
def test_an_exception_after_hello_sends_no_second_hello(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    monkeypatch.setattr(agent, "find_borg", lambda _policy, _env: "/usr/bin/borg")
    monkeypatch.setattr(agent, "borg_version", lambda _borg, _env: "1.2.4")
    monkeypatch.setattr(agent.REGISTRY["list"], "run", explode)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"protocol": 1, "repository": "/srv/repo"}))
    assert agent.main(["list", "--job", str(job_file), "--json"]) == 2
    captured = capfd.readouterr()
    events = json_lines(captured.out)
    assert [e["type"] for e in events] == ["hello", "result"]
    assert events[0]["borg_version"] == "1.2.4"
    assert events[-1]["error"]["msgid"] == "AgentError"
    assert "secret-project" not in captured.out


@pytest.mark.usefixtures("agent_in_process")
def test_an_exception_by_hand_prints_a_failure_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(agent, "validate_job", explode)
    assert agent.main(["hello"]) == 2
    captured = capfd.readouterr()
    assert "FAILED: AgentError: " in captured.out
    assert "exit code 2" in captured.out
    assert "secret-project" not in captured.out


@pytest.mark.usefixtures("agent_in_process")
def test_an_exception_while_writing_the_result_still_ends_with_one_failed_result(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(agent, "find_borg", lambda _policy, _env: "/usr/bin/borg")
    monkeypatch.setattr(agent, "borg_version", lambda _borg, _env: "1.2.4")
    monkeypatch.setattr(agent.REGISTRY["hello"], "summary", explode)  # the summary of success
    assert agent.main(["hello"]) == 2
    out = capfd.readouterr().out
    assert out.count("FAILED: AgentError: ") == 1
    assert out.count("exit code") == 1
    assert "exit code 2" in out
