"""Protocol 2 in the agent: the operation registry, ``sequence`` and its ``steps``, the protocol
a hello speaks, and what a stats step learns from the prune before it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.borg import AGENT_PATH
from tests.integration.agent_support import fed, load_agent

agent = load_agent()

SEQUENCE_JOB: dict[str, Any] = {
    "protocol": 2,
    "repository": "/srv/backup/repo",
    "archive_prefix": "laptop",
    "paths": ["/home"],
    "keep": {"daily": 7},
    "steps": ["create", "prune", "stats"],
}


def sequence_job(**fields: Any) -> dict[str, Any]:
    job = {**SEQUENCE_JOB, **fields}
    return {key: value for key, value in job.items() if value is not None}


def rejection(operation: str, raw: object) -> Any:
    with pytest.raises(agent.Rejected) as caught:
        agent.validate_job(operation, raw)
    return caught.value


# -- the registry ------------------------------------------------------------------------------


def test_the_module_names_derive_from_the_table() -> None:
    assert tuple(operation.name for operation in agent.OPERATION_TABLE) == agent.OPERATIONS
    assert agent.OPERATIONS == (
        "hello",
        "create",
        "prune",
        "stats",
        "list",
        "check",
        "extract",
        "drill",
        "offsite",
        "sequence",
    )
    assert agent.STEP_OPERATIONS == ("create", "prune", "stats", "list", "check", "drill")
    assert set(agent.STEP_OPERATIONS) < set(agent.OPERATIONS)
    assert not set(agent.RESERVED_OPERATIONS) & set(agent.OPERATIONS)


def test_argparse_offers_exactly_the_registry() -> None:
    parser = agent.argument_parser()
    commands = next(action for action in parser._actions if action.dest == "command")
    assert set(commands.choices) == {"serve", *agent.OPERATIONS}
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    for operation in agent.OPERATION_TABLE:
        assert helps[operation.name] == operation.help
        args = parser.parse_args([operation.name, "--job", "j.json", "--json"])
        assert (args.command, args.job, args.json) == (operation.name, "j.json", True)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "serve",
                "--policy",
                "p.json",
                "create",
                "sequence",
                "",
                "-x",
                "--",
                "--policy=q",
                "-h",
            ]
        ),
        max_size=5,
    )
)
def test_the_quick_serve_reading_agrees_with_argparse(arguments: list[str]) -> None:
    """The forced command's plain forms skip argparse; whatever they accept, argparse reads
    the same way (everything else goes to argparse itself)."""
    quick = agent.plain_serve_arguments(arguments)
    if quick is None:
        return
    args = agent.argument_parser().parse_args(arguments)
    assert (args.command, args.operation, args.policy) == ("serve", *quick)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["serve"], (None, None)),
        (["serve", "create"], ("create", None)),
        (["serve", "--policy", "/etc/p.json"], (None, "/etc/p.json")),
        (["serve", "--policy", "/etc/p.json", "list"], ("list", "/etc/p.json")),
        (["serve", "list", "--policy", "/etc/p.json"], ("list", "/etc/p.json")),
        (["serve", "--policy=/etc/p.json"], None),
        (["serve", "--policy"], None),
        (["serve", "a", "b"], None),
        (["serve", "--help"], None),
        (["hello"], None),
        ([], None),
    ],
)
def test_the_quick_serve_reading(arguments: list[str], expected: object) -> None:
    assert agent.plain_serve_arguments(arguments) == expected


@pytest.mark.parametrize("operation", agent.OPERATION_TABLE)
def test_every_entry_is_complete(operation: Any) -> None:
    assert callable(operation.run)
    assert callable(operation.summary)
    assert operation.help
    job = agent.Job()
    for field_name in operation.requires:
        assert hasattr(job, field_name)
        assert field_name in agent.FIELD_VALIDATORS
    assert agent.validate_operation(operation.name, None) == operation.name


def test_required_fields_come_from_the_registry() -> None:
    for operation in agent.OPERATION_TABLE:
        if operation.name in ("sequence", "offsite"):  # offsite: tests/unit/test_agent_offsite.py
            continue
        for field_name in operation.requires:
            raw = {key: value for key, value in SEQUENCE_JOB.items() if key != field_name}
            raw.pop("steps")
            assert rejection(operation.name, raw).field == field_name


# -- steps -------------------------------------------------------------------------------------


def test_a_sequence_job_is_accepted() -> None:
    job = agent.validate_job("sequence", SEQUENCE_JOB)
    assert job.steps == ("create", "prune", "stats")
    assert job.protocol == 2


@pytest.mark.parametrize(
    ("steps", "field", "message"),
    [
        (
            ["create", "backup"],
            "steps[1]",
            "must be one of create, prune, stats, list, check, drill",
        ),
        (["hello"], "steps[0]", "must be one of"),
        (["sequence"], "steps[0]", "must be one of"),
        (["create", "stats", "create"], "steps[2]", "already listed"),
        ([], "steps", "at least one step"),
        (
            ["create", "prune", "stats", "list", "check", "drill", "list"],
            "steps",
            "at most 6 entries",
        ),
        ("create", "steps", "must be a list"),
        ([1], "steps[0]", "must be one of"),
        (None, "steps", "is required for sequence"),
    ],
)
def test_bad_steps(steps: object, field: str, message: str) -> None:
    caught = rejection("sequence", sequence_job(steps=steps))
    assert caught.field == field
    assert message in caught.message


def test_all_five_steps_in_any_order() -> None:
    steps = ["check", "list", "stats", "prune", "create"]
    assert agent.validate_job("sequence", sequence_job(steps=steps)).steps == tuple(steps)


@pytest.mark.parametrize("operation", ["hello", "create", "prune", "stats", "list", "check"])
def test_steps_only_for_a_sequence(operation: str) -> None:
    caught = rejection(operation, sequence_job(steps=["create"]))
    assert (caught.field, caught.message) == ("steps", "is only valid for sequence")


def test_a_sequence_needs_protocol_2() -> None:
    caught = rejection("sequence", sequence_job(protocol=1))
    assert caught.field == "protocol"
    assert "protocol 2" in caught.message


def test_single_operations_take_protocol_1_and_2() -> None:
    for protocol in (1, 2):
        raw = {key: value for key, value in sequence_job(protocol=protocol).items()}
        raw.pop("steps")
        assert agent.validate_job("create", raw).protocol == protocol


@pytest.mark.parametrize(
    ("steps", "missing", "field"),
    [
        (["create"], "paths", "paths"),
        (["stats", "create"], "paths", "paths"),
        (["prune"], "keep", "keep"),
        (["stats", "prune"], "archive_prefix", "archive_prefix"),
        (["list"], "repository", "repository"),
        (["create", "prune", "stats"], "keep", "keep"),
    ],
)
def test_a_sequence_needs_what_each_step_needs(steps: list[str], missing: str, field: str) -> None:
    raw = sequence_job(steps=steps)
    raw.pop(missing)
    caught = rejection("sequence", raw)
    assert caught.field == field


def test_the_message_names_the_step_that_needs_the_field() -> None:
    raw = sequence_job(steps=["stats", "prune"])
    raw.pop("keep")
    assert rejection("sequence", raw).message == "prune needs at least one keep rule"
    raw = sequence_job(steps=["list", "create"])
    raw.pop("paths")
    assert rejection("sequence", raw).message == "is required for create"


def test_a_sequence_of_steps_that_need_little_needs_only_that() -> None:
    raw = {"protocol": 2, "repository": "/srv/r", "steps": ["list", "check", "stats"]}
    assert agent.validate_job("sequence", raw).steps == ("list", "check", "stats")


# -- the policy's operations, step by step ------------------------------------------------------


def policy(operations: list[str] | None) -> Any:
    raw: dict[str, Any] = {"repositories": ["/"], "paths": ["/"]}
    if operations is not None:
        raw["operations"] = operations
    return agent.parse_policy(raw)


def test_the_policy_must_allow_every_step() -> None:
    job = agent.validate_job("sequence", SEQUENCE_JOB)
    agent.check_policy(policy(["create", "prune", "stats"]), "sequence", job)
    agent.check_policy(policy(None), "sequence", job)
    with pytest.raises(agent.Rejected) as caught:
        agent.check_policy(policy(["create", "stats"]), "sequence", job)
    assert caught.value.field == "steps[1]"
    assert caught.value.message == "not allowed by this host's policy"


def test_listing_sequence_in_the_policy_allows_no_step() -> None:
    job = agent.validate_job("sequence", SEQUENCE_JOB)
    with pytest.raises(agent.Rejected) as caught:
        agent.check_policy(policy(["sequence", "create"]), "sequence", job)
    assert caught.value.field == "steps[1]"


# -- the protocol a hello speaks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "protocol"),
    [
        ({"protocol": 1}, 1),
        ({"protocol": 2}, 2),
        ({"protocol": 3}, 2),
        ({"protocol": True}, 2),
        ({"protocol": "1"}, 2),
        ({}, 2),
        ([], 2),
        ({"protocol": 1, "unknown": "field"}, 1),
    ],
)
def test_the_protocol_a_job_asks_for(raw: object, protocol: int) -> None:
    assert agent.requested_protocol(raw) == protocol


def serve(operation: str, line: bytes) -> list[dict[str, Any]]:
    completed = subprocess.run(
        [sys.executable, str(AGENT_PATH), "serve"],
        input=line + b"\n",
        capture_output=True,
        env={"SSH_ORIGINAL_COMMAND": operation, "PATH": "/nonexistent"},
        timeout=30,
        check=False,
    )
    return [json.loads(output) for output in completed.stdout.splitlines()]


def test_an_old_coordinators_rejected_job_gets_a_protocol_1_hello() -> None:
    hello, result = serve("create", json.dumps({"protocol": 1, "paths": "x"}).encode())
    assert (hello["protocol"], hello["protocols"]) == (1, [1, 2])
    assert result["error"]["field"] == "paths"


def test_a_job_for_an_unknown_protocol_gets_the_newest() -> None:
    hello, result = serve("create", json.dumps({"protocol": 7}).encode())
    assert (hello["protocol"], hello["protocols"]) == (2, [1, 2])
    assert (result["rc"], result["error"]["field"]) == (3, "protocol")


def test_a_protocol_1_sequence_is_rejected_after_a_protocol_1_hello() -> None:
    events = serve("sequence", json.dumps(sequence_job(protocol=1)).encode())
    assert [event["type"] for event in events] == ["hello", "result"]
    assert events[0]["protocol"] == 1
    assert (events[1]["rc"], events[1]["error"]["field"]) == (3, "protocol")
    assert events[1]["data"] == {}


def test_a_rejected_sequence_has_no_step_lines_and_no_step_in_its_error() -> None:
    events = serve("sequence", json.dumps(sequence_job(steps=["create", "nope"])).encode())
    assert [event["type"] for event in events] == ["hello", "result"]
    assert events[1]["error"] == {
        "msgid": "JobRejected",
        "field": "steps[1]",
        "message": "must be one of create, prune, stats, list, check, drill",
    }


# -- running a sequence (the steps replaced by stand-ins) ---------------------------------------


class RecordingOutput:
    def __init__(self, broken_after: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.broken_after = broken_after

    def write(self, event: dict[str, Any]) -> bool:
        if self.broken_after is not None and len(self.events) >= self.broken_after:
            return False
        self.events.append(event)
        return True


def stand_in(outcome: Any, borg_rc: int | None = 0, warnings: int = 0, stop: str = "") -> Any:
    """A step that 'ran borg' with this return code and these warnings, then ended so."""

    def run(runner: Any) -> Any:
        if borg_rc is not None:
            runner.session.borg_rcs.append(borg_rc)
        runner.session.warnings += warnings
        if stop:
            runner.session.request_stop(stop, "stopped in a test")
        return outcome

    return run


def run_sequence(
    monkeypatch: pytest.MonkeyPatch, steps: dict[str, Any], output: RecordingOutput | None = None
) -> tuple[int, list[dict[str, Any]]]:
    for name, run in steps.items():
        monkeypatch.setattr(agent.REGISTRY[name], "run", run)
    output = output or RecordingOutput()
    session = agent.Session("sequence", output)
    request = agent.Request(session)
    job = agent.validate_job("sequence", sequence_job(steps=list(steps)))
    session.steps = job.steps
    runner = agent.Runner(session, job, "/usr/bin/borg", {}, "1.2.4")
    code = request.result(agent.run_operation(runner, "sequence"))
    return code, output.events


def ok(data: dict[str, Any] | None = None) -> Any:
    return agent.Outcome(data or {"from": "a stand-in"})


def test_every_step_gets_a_step_line_then_one_result(monkeypatch: pytest.MonkeyPatch) -> None:
    code, events = run_sequence(
        monkeypatch,
        {
            "create": stand_in(ok({"n": 1}), 1, 2),
            "prune": stand_in(ok(), 0),
            "stats": stand_in(ok()),
        },
    )
    assert code == 1  # a step finished with warnings
    assert [(e["type"], e["operation"]) for e in events] == [
        ("step", "create"),
        ("step", "prune"),
        ("step", "stats"),
        ("result", "sequence"),
    ]
    create, prune = events[0], events[1]
    assert (create["ok"], create["rc"], create["borg_rc"], create["warnings"]) == (True, 1, 1, 2)
    assert create["data"] == {"n": 1}
    assert "error" not in create
    assert (prune["rc"], prune["borg_rc"], prune["warnings"]) == (0, 0, 0)
    result = events[-1]
    assert (result["ok"], result["rc"], result["borg_rc"], result["warnings"]) == (True, 1, 1, 2)
    assert result["data"] == {"completed": ["create", "prune", "stats"]}
    assert "error" not in result
    assert (
        set(result)
        == set(create)
        == {
            "type",
            "operation",
            "ok",
            "rc",
            "borg_rc",
            "duration",
            "warnings",
            "data",
        }
    )


def test_the_first_failing_step_ends_the_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    error = {"msgid": "LockTimeout", "message": "Failed to create/acquire the lock"}
    never = stand_in(ok())
    code, events = run_sequence(
        monkeypatch,
        {
            "create": stand_in(ok(), 0),
            "prune": stand_in(agent.Outcome({}, ok=False, error=error), 2),
            "stats": never,
        },
    )
    assert code == 2
    assert [(e["type"], e["operation"]) for e in events] == [
        ("step", "create"),
        ("step", "prune"),
        ("result", "sequence"),
    ]
    assert events[1]["error"] == error
    assert (events[1]["rc"], events[1]["borg_rc"]) == (2, 2)
    result = events[-1]
    assert (result["ok"], result["rc"], result["borg_rc"]) == (False, 2, 2)
    assert result["data"] == {"completed": ["create"]}
    assert result["error"] == {**error, "step": "prune"}


def test_a_stop_between_steps_names_the_step_that_did_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, events = run_sequence(
        monkeypatch,
        {"create": stand_in(ok(), 0, stop="CoordinatorGone"), "prune": stand_in(ok())},
    )
    assert code == 2
    assert [(e["type"], e["operation"]) for e in events] == [
        ("step", "create"),
        ("result", "sequence"),
    ]
    assert events[0]["ok"] is True  # create itself finished before the stop
    result = events[-1]
    assert result["data"] == {"completed": ["create"]}
    assert result["error"]["msgid"] == "CoordinatorGone"
    assert result["error"]["step"] == "prune"


def test_a_broken_output_during_a_step_line_starts_no_further_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []

    def recording(name: str) -> Any:
        def run(_runner: Any) -> Any:
            started.append(name)
            return ok()

        return run

    output = RecordingOutput(broken_after=0)
    code, _events = run_sequence(
        monkeypatch, {"create": recording("create"), "prune": recording("prune")}, output
    )
    assert started == ["create"]
    assert code == 2


def test_a_step_whose_borg_was_stopped_fails_with_the_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(runner: Any) -> Any:
        runner.session.request_stop("Interrupted", "the agent received SIGTERM")
        runner.session.interrupted = True  # what collect_output does when it stops borg
        runner.session.borg_rcs.append(2)
        return agent.Outcome({}, ok=False, error={"msgid": "BorgError", "message": "x"})

    _code, events = run_sequence(monkeypatch, {"create": interrupted, "stats": stand_in(ok())})
    step, result = events
    assert step["error"]["msgid"] == "Interrupted"
    assert result["error"] == {
        "msgid": "Interrupted",
        "message": "the agent received SIGTERM",
        "step": "create",
    }


def test_the_human_output_shows_each_step_and_the_sequence() -> None:
    step = {
        "type": "step",
        "operation": "list",
        "ok": True,
        "rc": 0,
        "duration": 0.2,
        "warnings": 0,
        "data": {"archives": [{"name": "a-1", "time": "t"}], "archive_count": 1},
    }
    assert agent.summary_lines(step) == ["a-1  t", "list finished in 0.2 s, exit code 0"]
    result = {
        "type": "result",
        "operation": "sequence",
        "ok": False,
        "rc": 2,
        "duration": 3.0,
        "warnings": 0,
        "data": {"completed": ["create"]},
        "error": {"msgid": "LockTimeout", "message": "lock", "step": "prune"},
    }
    assert agent.summary_lines(result) == [
        "FAILED: LockTimeout (step prune): lock",
        "sequence finished in 3.0 s, exit code 2",
    ]
    assert agent.sequence_summary({"completed": ["create", "prune"]}) == [
        "completed: create, prune"
    ]


# -- what a stats step after prune reports -------------------------------------------------------

ARCHIVE_ID = "ab" * 32


def prune_record(line: str) -> dict[str, Any]:
    return {"type": "log_message", "levelname": "INFO", "message": line, "name": "borg.output.list"}


PRUNE_OUTPUT = [
    prune_record(line)
    for line in [
        "Keeping checkpoint archive:              web-2025-01-11T12:00:00.checkpoint   "
        f"Sat, 2025-01-11 12:00:00 [{ARCHIVE_ID}]",
        "Keeping archive (rule: daily #1):        web-2025-01-10T12:00:00              "
        f"Fri, 2025-01-10 12:00:01 [{ARCHIVE_ID}]",
        "Pruning archive (1/2):                   web-2025-01-09T12:00:00              "
        f"Thu, 2025-01-09 12:00:00 [{ARCHIVE_ID}]",
        "Keeping archive (rule: weekly #1):       web-2025-01-05T12:00:00              "
        f"Sun, 2025-01-05 12:00:00 [{ARCHIVE_ID}]",
        "Keeping archive (rule: weekly #2):       web-2024-12-29T12:00:00.checkpoint.2 "
        f"Sun, 2024-12-29 12:00:00 [{ARCHIVE_ID}]",
        "Pruning archive (2/2):                   web-2025-01-04T12:00:00              "
        f"Sat, 2025-01-04 12:00:00 [{ARCHIVE_ID}]",
    ]
] + [{"type": "log_message", "levelname": "INFO", "message": "Pruning archives  50%"}]


def test_the_archives_prune_left_without_checkpoints() -> None:
    tally = fed(agent.PruneTally(), PRUNE_OUTPUT)
    assert tally.left == 2
    assert tally.newest_left == {
        "name": "web-2025-01-10T12:00:00",
        "time": "2025-01-10T12:00:01.000000",
    }


def test_stats_from_prunes_list_counts_and_names_the_newest() -> None:
    info = {"cache": {"stats": {"total_size": 10, "total_csize": 8, "unique_csize": 5}}}
    tally = fed(agent.PruneTally(), PRUNE_OUTPUT)
    data = agent.stats_data(info, tally.left, tally.newest_left)
    assert data == {
        "total_size": 10,
        "compressed_size": 8,
        "deduplicated_size": 5,
        "archive_count": 2,
        "last_archive": {"name": "web-2025-01-10T12:00:00", "time": "2025-01-10T12:00:01.000000"},
    }


def test_a_prune_that_kept_nothing_means_no_archives() -> None:
    tally = agent.PruneTally()
    assert agent.stats_data({}, tally.left, tally.newest_left)["last_archive"] is None


def test_prune_data_still_lists_kept_checkpoints_as_kept() -> None:
    data = agent.prune_data(fed(agent.PruneTally(), PRUNE_OUTPUT), agent.CompactTally())
    assert data["kept"] == [
        "web-2025-01-11T12:00:00.checkpoint",
        "web-2025-01-10T12:00:00",
        "web-2025-01-05T12:00:00",
        "web-2024-12-29T12:00:00.checkpoint.2",
    ]


class ScriptedRunner(agent.Runner):  # type: ignore[misc, name-defined]
    """The agent's runner with borg played: each command's rc and log lines scripted."""

    def __init__(self, prune_rc: int) -> None:
        job = agent.validate_job(
            "prune",
            {"protocol": 2, "repository": "/r", "archive_prefix": "web", "keep": {"daily": 1}},
        )
        super().__init__(
            agent.Session("sequence", agent.JsonLinesOutput(-1)), job, "borg", {}, "1.2.4"
        )
        self.prune_rc = prune_rc
        self.commands: list[str] = []

    def run(self, argv: list[str], watch: Any = None) -> Any:
        command = argv[1]
        self.commands.append(command)
        run = agent.BorgRun(watch)
        if command == "prune":
            run.rc = self.prune_rc
            for record in PRUNE_OUTPUT:
                run.add(record)
        if command == "info":
            run.stdout = json.dumps({"cache": {"stats": {"total_size": 1}}}).encode()
        if command == "list":
            run.stdout = json.dumps({"archives": []}).encode()
        return run


@pytest.mark.parametrize(("prune_rc", "commands"), [(0, ["info"]), (1, ["info", "list"])])
def test_stats_trusts_prunes_listing_only_after_a_prune_without_warnings(
    prune_rc: int, commands: list[str]
) -> None:
    runner = ScriptedRunner(prune_rc)
    assert agent.run_prune(runner).ok
    runner.commands.clear()
    assert agent.run_stats(runner).ok
    assert runner.commands == commands
