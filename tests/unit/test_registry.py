"""Every site that knows about operations agrees with the registry (operations.py) and with the
agent's own table: a new operation missed at one site fails here, not at run time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup_coordinator import entities, operations
from backup_coordinator.__main__ import _parser
from backup_coordinator.config import Config, parse_config
from backup_coordinator.jobs import agent_operation, build_job
from backup_coordinator.model import DroneSettings, DroneState, Operation
from backup_coordinator.protocol import PROTOCOL_VERSION
from backup_coordinator.store import DroneRecord
from tests.integration.agent_support import load_agent

agent = load_agent()

# What the agent's result data looks like for each step (docs/protocol.md, result.data).
STEP_DATA: dict[str, dict[str, Any]] = {
    "create": {
        "archive": {
            "name": "nas-2026-12-03T10:00:00",
            "nfiles": 3,
            "original_size": 10,
            "deduplicated_size": 5,
        },
        "repository": {"total_size": 10, "compressed_size": 5, "deduplicated_size": 4},
    },
    "prune": {"kept": ["nas-2026-12-03T10:00:00"], "pruned": [], "compact": {"freed_bytes": 0}},
    "stats": {
        "total_size": 10,
        "compressed_size": 5,
        "deduplicated_size": 4,
        "archive_count": 1,
        "last_archive": None,
    },
    "check": {"findings": [], "repository_ok": True, "verify_data": False, "partial": False},
    "extract": {
        "archive": "nas-2026-12-03T10:00:00",
        "destination": "/var/lib/backup-drone/restore/nas-2026-12-03T10:00:00",
        "files": 3,
        "bytes": 10,
        "warnings": 0,
        "partial": False,
    },
    "drill": {
        "archive": "nas-2026-12-03T10:00:00",
        "files_verified": 3,
        "bytes_verified": 10,
        "skipped_changed": 0,
        "mismatches": [],
        "mismatch_count": 0,
        "missing_canaries": [],
    },
}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "ssh": {"client_key": "/keys/id", "known_hosts": "/keys/known_hosts"},
            "drones": {
                "nas": {
                    "host": "nas.lan",
                    "repository": "/srv/borg/nas",
                    "passphrase": "secret",
                    "paths": ["/home"],
                }
            },
        },
        tmp_path,
    )


def test_every_operation_has_one_entry_whose_steps_are_known() -> None:
    assert set(operations.OPERATIONS) == set(Operation)
    for operation, spec in operations.OPERATIONS.items():
        assert spec.operation is operation
        assert spec.steps, operation
        assert all(step in operations.STEPS for step in spec.steps), operation


def test_every_step_is_an_agent_operation_and_a_sequence_step_when_it_shares_a_session() -> None:
    assert operations.STEPS.keys() <= set(agent.OPERATIONS)
    for spec in operations.OPERATIONS.values():
        if len(spec.steps) > 1:
            assert set(spec.steps) <= set(agent.STEP_OPERATIONS), spec.operation
    assert set(operations.STEPS) - set(agent.STEP_OPERATIONS) == {"extract"}  # only ever alone


def test_every_step_shows_its_own_busy_state_which_the_state_sensor_offers() -> None:
    states = [step.busy_state for step in operations.STEPS.values()]
    assert len(set(states)) == len(states)
    assert set(DroneState) >= operations.BUSY_STATES
    assert DroneState.IDLE not in operations.BUSY_STATES


@pytest.mark.parametrize("operation", list(Operation))
def test_the_agent_accepts_the_job_the_coordinator_builds(
    config: Config, operation: Operation
) -> None:
    steps = operations.spec_of(operation).steps
    job = build_job(config.drones[0], DroneSettings(), steps)
    assert job["protocol"] == PROTOCOL_VERSION
    word = agent_operation(steps)
    validated = agent.validate_job(word, job)
    assert validated.repository == "/srv/borg/nas"
    if len(steps) > 1:
        assert word == "sequence"
        assert tuple(job["steps"]) == steps
    else:
        assert word == steps[0]
        assert "steps" not in job


@pytest.mark.parametrize("step", list(operations.STEPS))
def test_every_step_folds_and_summarises_the_agents_result_data(step: str) -> None:
    record = DroneRecord()
    spec = operations.STEPS[step]
    spec.fold(record, STEP_DATA[step], datetime.now(UTC))
    assert spec.summary(STEP_DATA[step])
    assert "?" not in spec.summary(STEP_DATA[step])


def test_the_cli_offers_exactly_the_registered_operations() -> None:
    commands = next(a for a in _parser()._actions if a.dest == "command")
    run_parser = commands.choices["run"]  # type: ignore[index]
    operation_argument = next(a for a in run_parser._actions if a.dest == "operation")
    assert set(operation_argument.choices) == {op.value for op in Operation}


def test_every_button_requests_the_operation_the_registry_gives_it() -> None:
    buttons = [
        helper
        for helper in entities.drone_helpers("borg", "nas", DroneSettings())
        if helper.domain == "input_button"
    ]
    expected = {
        spec.button.key: spec.operation
        for spec in operations.OPERATIONS.values()
        if spec.button is not None
    }
    assert {b.object_id.removeprefix("borg_nas_"): b.operation for b in buttons} == expected


def test_a_prune_summary_counts_what_the_agent_counted_beyond_its_cut_lists() -> None:
    data = {"kept": ["a"], "pruned": ["b"], "kept_count": 1200, "pruned_count": 3}
    assert operations.STEPS["prune"].summary(data) == "pruned 3, kept 1200"


def test_summary_joins_the_steps_in_the_order_they_ran() -> None:
    text = operations.summary({"create": STEP_DATA["create"], "stats": STEP_DATA["stats"]})
    assert text.startswith("archive nas-2026-12-03T10:00:00: 3 files")
    assert text.endswith("1 archives")


def test_a_restore_is_asked_for_with_an_event_and_a_drill_with_a_button() -> None:
    assert operations.spec_of(Operation.EXTRACT).button is None  # it needs an archive and paths
    drill = operations.spec_of(Operation.DRILL).button
    assert drill is not None
    assert drill.key == "restore_drill"


def test_extract_is_an_agent_operation_but_no_step_of_a_sequence() -> None:
    assert "extract" in agent.OPERATIONS
    assert "extract" not in agent.STEP_OPERATIONS
    assert {"check", "drill"} <= set(agent.STEP_OPERATIONS)


def test_a_restore_request_goes_into_the_extract_job(config: Config) -> None:
    request = {"archive": "nas-2026-12-03T10:00:00", "restore_paths": ["home"], "destination": "/r"}
    job = build_job(config.drones[0], DroneSettings(), ("extract",), extra=request)
    assert {key: job[key] for key in request} == request
    validated = agent.validate_job("extract", job)
    assert (validated.archive, validated.restore_paths) == ("nas-2026-12-03T10:00:00", ("home",))
    assert build_job(config.drones[0], DroneSettings(), ("extract",))["archive"] == "latest"


def test_a_drill_takes_a_new_sample_each_day(config: Config) -> None:
    assert operations.drill_seed(datetime(2026, 12, 3, 23, 59, tzinfo=UTC)) == 20261203
    job = build_job(config.drones[0], DroneSettings(), ("drill",))
    assert job["drill"]["seed"] == operations.drill_seed(datetime.now(UTC))
    validated = agent.validate_job("drill", job).drill
    assert validated.seed == job["drill"]["seed"]
    assert (validated.size_budget, validated.max_files) == (64 * 1024 * 1024, 100)


def test_a_default_check_sends_no_options_an_older_agent_would_refuse(config: Config) -> None:
    assert "check" not in build_job(config.drones[0], DroneSettings(), ("check",))


def test_summaries_of_check_drill_and_extract() -> None:
    check = {"findings": ["x"], "finding_count": 7, "verify_data": True, "partial": True}
    assert operations.STEPS["check"].summary(check) == (
        "7 finding(s) (data verified) (partial: time limit reached)"
    )
    drill = {**STEP_DATA["drill"], "mismatch_count": 2, "missing_canaries": ["/etc/x"]}
    assert (
        operations.STEPS["drill"]
        .summary(drill)
        .endswith("2 mismatch(es), 1 canary file(s) missing")
    )
    assert "(partial)" in operations.STEPS["extract"].summary(
        {**STEP_DATA["extract"], "partial": True}
    )


def test_count_beyond_counts_what_a_cut_list_left_out() -> None:
    data = {"archives": [{"name": "a"}], "archive_count": 5}
    assert operations.count_beyond(data, "archive", "archives") == 4
    assert operations.count_beyond({"archives": []}, "archive", "archives") == 0


def test_the_archive_count_follows_every_create_and_prune() -> None:
    record = DroneRecord(archive_count=4)
    now = datetime.now(UTC)
    operations.STEPS["create"].fold(record, STEP_DATA["create"], now)
    assert record.archive_count == 5  # one more, before stats counts again
    operations.STEPS["prune"].fold(record, {"kept": ["a", "b"], "kept_count": 3}, now)
    assert record.archive_count == 3  # what prune kept of the prefix
    unknown = DroneRecord()
    operations.STEPS["create"].fold(unknown, STEP_DATA["create"], now)
    assert unknown.archive_count is None  # never counted: no guess
