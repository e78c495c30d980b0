"""Exactly what Home Assistant is shown for a few states of the core.

Entity ids, names, states and attributes are a contract: people's dashboards and automations,
the e2e tests and the app's restart logic all depend on them. These expectations were taken from
the catalogue as it was before it became a table of descriptions, and pin it down literally
(entities added since are added here as they are meant to look).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from backup_coordinator.config import EntityBackend, parse_config
from backup_coordinator.dashboard import coordinator_section, dashboard, drone_section
from backup_coordinator.entities import (
    DroneSnapshot,
    HelperSpec,
    ProgressSnapshot,
    Publication,
    coordinator_helpers,
    coordinator_sensors,
    drone_helpers,
    drone_sensors,
    progress_sensor,
)
from backup_coordinator.model import MIB, DroneSettings, DroneState, KeepRules, Mode, Operation

BUSY_SNAPSHOT = DroneSnapshot(
    name="nas",
    state=DroneState.CREATING,
    operation="create",
    last_backup=datetime(2026, 11, 1, 12, 30, 5, 123456, tzinfo=UTC),
    last_prune=datetime(2026, 10, 31, 23, 0, tzinfo=timezone(timedelta(hours=2))),
    last_archive={
        "name": "nas-2026-11-01T12:30:05",
        "nfiles": 1234,
        "duration": 61.5,
        "original_size": 1,
    },
    # a bool is not a size; chunk counts are not shown
    repository={
        "total_size": 5 * MIB + 123,
        "compressed_size": 0,
        "deduplicated_size": True,
        "total_chunks": 9,
    },
    archive_count=12,
    next_backup=datetime(2026, 11, 2, 12, 30, 5, tzinfo=UTC),
    problems=("overdue: no backup for 3 days", "keep within rejected: '7x'"),
    consecutive_failures=2,
    last_error="x" * 300,  # longer than HA takes
    last_error_kind="borg_error",
    last_error_hint="run borg check",
    progress=ProgressSnapshot(
        "nas",
        "create",
        1234,
        456_789_012,
        400_000_000,
        12_345,
        56.789,
        154_978_140.4,
        3725.4,
        False,
        path="home/zoe/" + "d" * 300,  # a path longer than HA takes
        expected_size=804_000_000,
        expected_files=2000,
    ),
    agent_version="1.4.0",
    borg_version="1.2.4",
)

MY_PC2_SETTINGS = DroneSettings(
    mode=Mode.MANUAL,
    frequency_minutes=60,
    keep=KeepRules(within="7d", weekly=0, monthly=3, yearly=10),
)


def test_sensors_of_a_drone_nothing_is_known_about() -> None:
    assert drone_sensors("borg", DroneSnapshot.empty("nas")) == EMPTY_NAS


def test_sensors_of_a_busy_failing_drone_under_another_prefix() -> None:
    assert drone_sensors("home_backup", BUSY_SNAPSHOT) == BUSY_NAS


def test_controls_of_a_drone_carry_its_settings() -> None:
    assert drone_helpers("borg", "my_pc2", MY_PC2_SETTINGS) == MY_PC2_HELPERS


def test_controls_of_the_coordinator() -> None:
    assert coordinator_helpers("borg") == COORDINATOR_HELPERS


def test_progress_with_nothing_running_estimated_and_final() -> None:
    assert progress_sensor("borg", None) == NO_PROGRESS
    running = ProgressSnapshot(
        "nas",
        "create",
        0,
        10,
        5,
        0,
        12.345,
        1234.6,
        None,
        False,
        path="home/zoe/notes.txt",
        expected_size=81,
    )
    assert progress_sensor("borg", running) == PROGRESS
    final = ProgressSnapshot("nas", "scheduled", 3, 10, 5, 1, None, None, 3725.4, True)
    assert progress_sensor("borg", final) == FINAL_PROGRESS


def test_coordinator_sensors_idle_and_busy() -> None:
    assert coordinator_sensors("borg", {}, [], [], [], "running") == IDLE_COORDINATOR
    busy = coordinator_sensors(
        "borg",
        running={"nas": "create", "pc": "prune"},
        queue=[("nas", "stats"), ("pc", "scheduled")],
        round_robin=["pc", "nas"],
        failing=["pc"],
        global_mode="paused",
    )
    assert busy == BUSY_COORDINATOR


def test_attribute_order_is_kept() -> None:
    """HA shows attributes in the order they were sent: friendly name, looks, then values."""
    published = [
        *drone_sensors("borg", DroneSnapshot.empty("nas")),
        *drone_sensors("home_backup", BUSY_SNAPSHOT),
        progress_sensor("borg", None),
        progress_sensor(
            "borg",
            ProgressSnapshot(
                "nas", "create", 0, 10, 5, 0, 1, 1, 1, False, path="a", expected_size=1
            ),
        ),
        *coordinator_sensors("borg", {}, [], [], [], "running"),
    ]
    expected = [*EMPTY_NAS, *BUSY_NAS, NO_PROGRESS, PROGRESS, *IDLE_COORDINATOR]
    for publication, wanted in zip(published, expected, strict=True):
        assert list(publication.attributes) == list(wanted.attributes), wanted.entity_id


def test_dashboard_section_of_a_drone() -> None:
    assert drone_section("borg", "nas", EntityBackend.HELPERS) == NAS_SECTION


def test_dashboard_of_two_drones_over_mqtt() -> None:
    args: dict[str, Any] = {
        "entities": "mqtt",
        "ssh": {"client_key": "keys/coordinator", "known_hosts": "/etc/backup/known_hosts"},
        "drones": {
            name: {"host": f"{name}.lan", "repository": f"/srv/borg/{name}", "paths": ["/home"]}
            for name in ("pc", "nas")
        },
    }
    config = parse_config(args, Path("/conf/apps"))
    assert dashboard(config, "Backups") == {
        "title": "Backups",
        "views": [
            {
                "title": "Backups",
                "path": "backups",
                "type": "sections",
                "max_columns": 3,
                "sections": [
                    coordinator_section("borg", EntityBackend.MQTT),
                    drone_section("borg", "nas", EntityBackend.MQTT),
                    drone_section("borg", "pc", EntityBackend.MQTT),
                ],
            }
        ],
    }
    assert coordinator_section("borg", EntityBackend.MQTT) == {
        "type": "grid",
        "cards": [
            {
                "type": "heading",
                "heading": "Borg coordinator",
                "heading_style": "title",
                "icon": "mdi:backup-restore",
            },
            {
                "type": "entities",
                "state_color": True,
                "entities": [
                    {"entity": "select.borg_coordinator_mode", "name": "Coordinator mode"},
                    {"entity": "sensor.borg_active", "name": "Active"},
                    {"entity": "sensor.borg_progress", "name": "Progress"},
                    {"entity": "sensor.borg_queue", "name": "Queue"},
                    {"entity": "sensor.borg_failing", "name": "Failing drones"},
                ],
            },
        ],
    }
    nas = drone_section("borg", "nas", EntityBackend.MQTT)
    controls = nas["cards"][-1]["entities"]
    assert {"entity": "button.borg_nas_create", "name": "Create"} in controls
    assert {"entity": "select.borg_nas_mode", "name": "Mode"} in controls
    assert {"entity": "number.borg_nas_keep_hourly", "name": "Keep hourly"} in controls
    assert {"entity": "text.borg_nas_keep_within", "name": "Keep within"} in controls


QUIET = "['none', 'unknown', 'unavailable', '']"
NAS_SECTION = {
    "type": "grid",
    "cards": [
        {"type": "heading", "heading": "nas", "heading_style": "title", "icon": "mdi:server"},
        {
            "type": "entities",
            "state_color": True,
            "entities": [
                {"entity": "sensor.borg_nas_state", "name": "State"},
                {"entity": "sensor.borg_nas_last_backup", "name": "Last backup"},
                {"entity": "sensor.borg_nas_next_backup", "name": "Next backup"},
                {"entity": "binary_sensor.borg_nas_problem", "name": "Problem"},
                {"type": "section", "label": "Progress"},
                {"entity": "sensor.borg_nas_progress", "name": "Progress"},
                {"entity": "sensor.borg_nas_speed", "name": "Speed"},
                {"entity": "sensor.borg_nas_eta", "name": "Time left"},
                {"entity": "sensor.borg_nas_current_file", "name": "Current file"},
            ],
        },
        {
            "type": "conditional",
            "conditions": [
                {
                    "condition": "or",
                    "conditions": [
                        {
                            "condition": "state",
                            "entity": "binary_sensor.borg_nas_problem",
                            "state": "on",
                        },
                        {
                            "condition": "state",
                            "entity": "sensor.borg_nas_last_error",
                            "state_not": ["none", "unknown", "unavailable", ""],
                        },
                        {
                            "condition": "state",
                            "entity": "sensor.borg_nas_hint",
                            "state_not": ["none", "unknown", "unavailable", ""],
                        },
                    ],
                }
            ],
            "card": {
                "type": "markdown",
                "content": "{% if is_state('binary_sensor.borg_nas_problem', 'on') %}**Problem:**"
                " {{ state_attr('binary_sensor.borg_nas_problem', 'reason')"
                " | replace('[', '\\\\[') }}{% endif %}\n\n"
                "{% set text = states('sensor.borg_nas_last_error') %}"
                f"{{% if text not in {QUIET} %}}**Last error:**"
                " {{ text | replace('[', '\\\\[') }}{% endif %}\n\n"
                "{% set text = states('sensor.borg_nas_hint') %}"
                f"{{% if text not in {QUIET} %}}**What to do:**"
                " {{ text | replace('[', '\\\\[') }}{% endif %}",
            },
        },
        {"type": "heading", "heading": "Actions", "heading_style": "subtitle"},
        {
            "type": "entities",
            "state_color": True,
            "entities": [
                {"entity": "input_button.borg_nas_create", "name": "Create"},
                {"entity": "input_button.borg_nas_prune", "name": "Prune"},
                {"entity": "input_button.borg_nas_update_stats", "name": "Update stats"},
                {"entity": "input_button.borg_nas_check", "name": "Check"},
                {"entity": "input_button.borg_nas_restore_drill", "name": "Restore drill"},
                {"entity": "input_button.borg_nas_scheduled_backup", "name": "Scheduled backup"},
                {"type": "section", "label": "Settings"},
                {"entity": "input_select.borg_nas_mode", "name": "Mode"},
                {"entity": "input_number.borg_nas_frequency", "name": "Frequency"},
                {"type": "section", "label": "Retention"},
                {"entity": "input_text.borg_nas_keep_within", "name": "Keep within"},
                {"entity": "input_number.borg_nas_keep_hourly", "name": "Keep hourly"},
                {"entity": "input_number.borg_nas_keep_daily", "name": "Keep daily"},
                {"entity": "input_number.borg_nas_keep_weekly", "name": "Keep weekly"},
                {"entity": "input_number.borg_nas_keep_monthly", "name": "Keep monthly"},
                {"entity": "input_number.borg_nas_keep_yearly", "name": "Keep yearly"},
                {"type": "section", "label": "Repository"},
                {"entity": "sensor.borg_nas_last_prune", "name": "Last prune"},
                {
                    "entity": "sensor.borg_nas_last_verified_restore",
                    "name": "Last verified restore",
                },
                {"entity": "sensor.borg_nas_last_check", "name": "Last check"},
                {"entity": "sensor.borg_nas_total_size", "name": "Total size"},
                {"entity": "sensor.borg_nas_compressed_size", "name": "Compressed size"},
                {"entity": "sensor.borg_nas_deduplicated_size", "name": "Deduplicated size"},
                {"type": "section", "label": "Diagnostics"},
                {"entity": "sensor.borg_nas_agent_version", "name": "Agent version"},
                {"entity": "sensor.borg_nas_borg_version", "name": "Borg version"},
            ],
        },
    ],
}


# --- the expectations ---

EMPTY_NAS = [
    Publication(
        entity_id="sensor.borg_nas_state",
        state="idle",
        attributes={
            "friendly_name": "Borg nas state",
            "icon": "mdi:state-machine",
            "device_class": "enum",
            "options": [
                "idle",
                "creating",
                "pruning",
                "updating_stats",
                "checking",
                "restoring",
                "drilling",
                "offsite",
                "error",
                "unreachable",
            ],
            "operation": "none",
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_last_backup",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas last backup",
            "icon": "mdi:history",
            "device_class": "timestamp",
            "archive": "",
            "files": None,
            "duration_s": None,
            "archive_count": None,
            "recent_archives": [],
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_last_prune",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas last prune",
            "icon": "mdi:content-cut",
            "device_class": "timestamp",
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_last_verified_restore",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas last verified restore",
            "icon": "mdi:file-check-outline",
            "device_class": "timestamp",
            "archive": "",
            "files": None,
            "bytes": None,
            "skipped_changed": None,
            "mismatches": None,
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_last_check",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas last check",
            "icon": "mdi:shield-check-outline",
            "device_class": "timestamp",
            "findings": None,
            "verify_data": None,
            "partial": None,
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_next_backup",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas next backup",
            "icon": "mdi:calendar-clock",
            "device_class": "timestamp",
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_total_size",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas total size",
            "icon": "mdi:harddisk",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "bytes": None,
        },
        native_state="unknown",
    ),
    Publication(
        entity_id="sensor.borg_nas_compressed_size",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas compressed size",
            "icon": "mdi:harddisk",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "bytes": None,
        },
        native_state="unknown",
    ),
    Publication(
        entity_id="sensor.borg_nas_deduplicated_size",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas deduplicated size",
            "icon": "mdi:harddisk",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "bytes": None,
        },
        native_state="unknown",
    ),
    Publication(
        entity_id="binary_sensor.borg_nas_problem",
        state="off",
        attributes={
            "friendly_name": "Borg nas problem",
            "device_class": "problem",
            "reason": "none",
            "consecutive_failures": 0,
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_last_error",
        state="none",
        attributes={
            "friendly_name": "Borg nas last error",
            "icon": "mdi:alert-circle-outline",
            "kind": "none",
            "hint": "",
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_progress",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas progress",
            "icon": "mdi:progress-upload",
            "unit_of_measurement": "%",
            "operation": "none",
            "files": None,
            "expected_files": None,
            "original_size": None,
            "expected_size": None,
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_speed",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas speed",
            "icon": "mdi:speedometer",
            "device_class": "data_rate",
            "unit_of_measurement": "MB/s",
        },
        native_state="unknown",
    ),
    Publication(
        entity_id="sensor.borg_nas_eta",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas time left",
            "icon": "mdi:timer-sand",
            "device_class": "duration",
            "unit_of_measurement": "min",
        },
        native_state="unknown",
    ),
    Publication(
        entity_id="sensor.borg_nas_current_file",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas current file",
            "icon": "mdi:file-arrow-up-down-outline",
        },
    ),
    Publication(
        entity_id="sensor.borg_nas_hint",
        state="none",
        attributes={"friendly_name": "Borg nas what to do", "icon": "mdi:lightbulb-on-outline"},
    ),
    Publication(
        entity_id="sensor.borg_nas_agent_version",
        state="unknown",
        attributes={"friendly_name": "Borg nas agent version", "icon": "mdi:tag-outline"},
    ),
    Publication(
        entity_id="sensor.borg_nas_borg_version",
        state="unknown",
        attributes={
            "friendly_name": "Borg nas borg version",
            "icon": "mdi:package-variant-closed",
        },
    ),
]

BUSY_NAS = [
    Publication(
        entity_id="sensor.home_backup_nas_state",
        state="creating",
        attributes={
            "friendly_name": "Home backup nas state",
            "icon": "mdi:state-machine",
            "device_class": "enum",
            "options": [
                "idle",
                "creating",
                "pruning",
                "updating_stats",
                "checking",
                "restoring",
                "drilling",
                "offsite",
                "error",
                "unreachable",
            ],
            "operation": "create",
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_last_backup",
        state="2026-11-01T12:30:05+00:00",
        attributes={
            "friendly_name": "Home backup nas last backup",
            "icon": "mdi:history",
            "device_class": "timestamp",
            "archive": "nas-2026-11-01T12:30:05",
            "files": 1234,
            "duration_s": 61.5,
            "archive_count": 12,
            "recent_archives": [],
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_last_prune",
        state="2026-10-31T23:00:00+02:00",
        attributes={
            "friendly_name": "Home backup nas last prune",
            "icon": "mdi:content-cut",
            "device_class": "timestamp",
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_last_verified_restore",
        state="unknown",
        attributes={
            "friendly_name": "Home backup nas last verified restore",
            "icon": "mdi:file-check-outline",
            "device_class": "timestamp",
            "archive": "",
            "files": None,
            "bytes": None,
            "skipped_changed": None,
            "mismatches": None,
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_last_check",
        state="unknown",
        attributes={
            "friendly_name": "Home backup nas last check",
            "icon": "mdi:shield-check-outline",
            "device_class": "timestamp",
            "findings": None,
            "verify_data": None,
            "partial": None,
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_next_backup",
        state="2026-11-02T12:30:05+00:00",
        attributes={
            "friendly_name": "Home backup nas next backup",
            "icon": "mdi:calendar-clock",
            "device_class": "timestamp",
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_total_size",
        state="5.00",
        attributes={
            "friendly_name": "Home backup nas total size",
            "icon": "mdi:harddisk",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "bytes": 5243003,
        },
        native_state="5243003",
    ),
    Publication(
        entity_id="sensor.home_backup_nas_compressed_size",
        state="0.00",
        attributes={
            "friendly_name": "Home backup nas compressed size",
            "icon": "mdi:harddisk",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "bytes": 0,
        },
        native_state="0",
    ),
    Publication(
        entity_id="sensor.home_backup_nas_deduplicated_size",
        state="unknown",
        attributes={
            "friendly_name": "Home backup nas deduplicated size",
            "icon": "mdi:harddisk",
            "device_class": "data_size",
            "unit_of_measurement": "MiB",
            "state_class": "measurement",
            "bytes": None,
        },
        native_state="unknown",
    ),
    Publication(
        entity_id="binary_sensor.home_backup_nas_problem",
        state="on",
        attributes={
            "friendly_name": "Home backup nas problem",
            "device_class": "problem",
            "reason": "overdue: no backup for 3 days; keep within rejected: '7x'",
            "consecutive_failures": 2,
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_last_error",
        state="x" * 254 + "…",
        attributes={
            "friendly_name": "Home backup nas last error",
            "icon": "mdi:alert-circle-outline",
            "kind": "borg_error",
            "hint": "run borg check",
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_progress",
        state="56.8",
        attributes={
            "friendly_name": "Home backup nas progress",
            "icon": "mdi:progress-upload",
            "unit_of_measurement": "%",
            "operation": "create",
            "files": 1234,
            "expected_files": 2000,
            "original_size": 456789012,
            "expected_size": 804000000,
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_speed",
        state="154.98",
        attributes={
            "friendly_name": "Home backup nas speed",
            "icon": "mdi:speedometer",
            "device_class": "data_rate",
            "unit_of_measurement": "MB/s",
        },
        native_state="154978140",
    ),
    Publication(
        entity_id="sensor.home_backup_nas_eta",
        state="62.1",
        attributes={
            "friendly_name": "Home backup nas time left",
            "icon": "mdi:timer-sand",
            "device_class": "duration",
            "unit_of_measurement": "min",
        },
        native_state="3725",
    ),
    Publication(
        entity_id="sensor.home_backup_nas_current_file",
        state="…" + "d" * 27,  # what a dashboard row has room for; the path in full below
        attributes={
            "friendly_name": "Home backup nas current file",
            "icon": "mdi:file-arrow-up-down-outline",
            "path": "home/zoe/" + "d" * 300,
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_hint",
        state="run borg check",
        attributes={
            "friendly_name": "Home backup nas what to do",
            "icon": "mdi:lightbulb-on-outline",
        },
    ),
    Publication(
        entity_id="sensor.home_backup_nas_agent_version",
        state="1.4.0",
        attributes={"friendly_name": "Home backup nas agent version", "icon": "mdi:tag-outline"},
    ),
    Publication(
        entity_id="sensor.home_backup_nas_borg_version",
        state="1.2.4",
        attributes={
            "friendly_name": "Home backup nas borg version",
            "icon": "mdi:package-variant-closed",
        },
    ),
]

MY_PC2_HELPERS = [
    HelperSpec(
        domain="input_select",
        object_id="borg_my_pc2_mode",
        name="Borg my_pc2 mode",
        icon="mdi:cog-outline",
        create_fields={"options": ["scheduled", "manual", "disabled"]},
        first_value="manual",
        drone="my_pc2",
        setting="mode",
        operation=None,
    ),
    HelperSpec(
        domain="input_number",
        object_id="borg_my_pc2_frequency",
        name="Borg my_pc2 frequency",
        icon="mdi:timer-sync-outline",
        create_fields={
            "min": 1,
            "max": 43200,
            "step": 1,
            "mode": "box",
            "unit_of_measurement": "min",
        },
        first_value=60,
        drone="my_pc2",
        setting="frequency",
        operation=None,
    ),
    HelperSpec(
        domain="input_text",
        object_id="borg_my_pc2_keep_within",
        name="Borg my_pc2 keep within",
        icon="mdi:calendar-range",
        create_fields={"min": 0, "max": 16, "pattern": "^$|^[1-9][0-9]{0,5}[Hdwmy]$"},
        first_value="7d",
        drone="my_pc2",
        setting="keep_within",
        operation=None,
    ),
    HelperSpec(
        domain="input_number",
        object_id="borg_my_pc2_keep_hourly",
        name="Borg my_pc2 keep hourly",
        icon="mdi:clock-outline",
        create_fields={"min": 0, "max": 1000, "step": 1, "mode": "box"},
        first_value=0,
        drone="my_pc2",
        setting="keep_hourly",
        operation=None,
    ),
    HelperSpec(
        domain="input_number",
        object_id="borg_my_pc2_keep_daily",
        name="Borg my_pc2 keep daily",
        icon="mdi:calendar-today",
        create_fields={"min": 0, "max": 1000, "step": 1, "mode": "box"},
        first_value=7,
        drone="my_pc2",
        setting="keep_daily",
        operation=None,
    ),
    HelperSpec(
        domain="input_number",
        object_id="borg_my_pc2_keep_weekly",
        name="Borg my_pc2 keep weekly",
        icon="mdi:calendar-week",
        create_fields={"min": 0, "max": 1000, "step": 1, "mode": "box"},
        first_value=0,
        drone="my_pc2",
        setting="keep_weekly",
        operation=None,
    ),
    HelperSpec(
        domain="input_number",
        object_id="borg_my_pc2_keep_monthly",
        name="Borg my_pc2 keep monthly",
        icon="mdi:calendar-month",
        create_fields={"min": 0, "max": 1000, "step": 1, "mode": "box"},
        first_value=3,
        drone="my_pc2",
        setting="keep_monthly",
        operation=None,
    ),
    HelperSpec(
        domain="input_number",
        object_id="borg_my_pc2_keep_yearly",
        name="Borg my_pc2 keep yearly",
        icon="mdi:calendar-star",
        create_fields={"min": 0, "max": 1000, "step": 1, "mode": "box"},
        first_value=10,
        drone="my_pc2",
        setting="keep_yearly",
        operation=None,
    ),
    HelperSpec(
        domain="input_button",
        object_id="borg_my_pc2_create",
        name="Borg my_pc2 create",
        icon="mdi:backup-restore",
        create_fields={},
        first_value=None,
        drone="my_pc2",
        setting=None,
        operation=Operation.CREATE,
    ),
    HelperSpec(
        domain="input_button",
        object_id="borg_my_pc2_prune",
        name="Borg my_pc2 prune",
        icon="mdi:content-cut",
        create_fields={},
        first_value=None,
        drone="my_pc2",
        setting=None,
        operation=Operation.PRUNE,
    ),
    HelperSpec(
        domain="input_button",
        object_id="borg_my_pc2_update_stats",
        name="Borg my_pc2 update stats",
        icon="mdi:chart-box-outline",
        create_fields={},
        first_value=None,
        drone="my_pc2",
        setting=None,
        operation=Operation.STATS,
    ),
    HelperSpec(
        domain="input_button",
        object_id="borg_my_pc2_check",
        name="Borg my_pc2 check",
        icon="mdi:shield-search",
        create_fields={},
        first_value=None,
        drone="my_pc2",
        setting=None,
        operation=Operation.CHECK,
    ),
    HelperSpec(
        domain="input_button",
        object_id="borg_my_pc2_restore_drill",
        name="Borg my_pc2 restore drill",
        icon="mdi:file-restore-outline",
        create_fields={},
        first_value=None,
        drone="my_pc2",
        setting=None,
        operation=Operation.DRILL,
    ),
    HelperSpec(
        domain="input_button",
        object_id="borg_my_pc2_scheduled_backup",
        name="Borg my_pc2 scheduled backup",
        icon="mdi:calendar-sync",
        create_fields={},
        first_value=None,
        drone="my_pc2",
        setting=None,
        operation=Operation.SCHEDULED,
    ),
]

COORDINATOR_HELPERS = [
    HelperSpec(
        domain="input_select",
        object_id="borg_coordinator_mode",
        name="Borg coordinator mode",
        icon="mdi:play-pause",
        create_fields={"options": ["running", "paused"]},
        first_value="running",
        drone=None,
        setting="global_mode",
        operation=None,
    )
]

NO_PROGRESS = Publication(
    entity_id="sensor.borg_progress",
    state="idle",
    attributes={
        "friendly_name": "Borg progress",
        "icon": "mdi:progress-upload",
        "drone": "none",
        "operation": "none",
    },
    native_state="idle",
)

PROGRESS = Publication(
    entity_id="sensor.borg_progress",
    state="12.3",
    attributes={
        "friendly_name": "Borg progress",
        "icon": "mdi:progress-upload",
        "unit_of_measurement": "%",
        "drone": "nas",
        "operation": "create",
        "files": 0,
        "original_size": 10,
        "compressed_size": 5,
        "deduplicated_size": 0,
        "expected_size": 81,
        "expected_files": None,
        "speed": "0.0 MB/s",
        "time_left": None,
        "current_file": "home/zoe/notes.txt",
    },
    native_state="12.3 %",
)

FINAL_PROGRESS = Publication(
    entity_id="sensor.borg_progress",
    state="unknown",
    attributes={
        "friendly_name": "Borg progress",
        "icon": "mdi:progress-upload",
        "unit_of_measurement": "%",
        "drone": "nas",
        "operation": "scheduled",
        "files": 3,
        "original_size": 10,
        "compressed_size": 5,
        "deduplicated_size": 1,
        "expected_size": None,
        "expected_files": None,
        "speed": None,
        "time_left": "1 h 02 min",
        "current_file": "",
    },
    native_state="unknown",
)

IDLE_COORDINATOR = [
    Publication(
        entity_id="sensor.borg_active",
        state="idle",
        attributes={
            "friendly_name": "Borg active",
            "icon": "mdi:run",
            "drones": [],
            "operations": [],
            "global_mode": "running",
        },
    ),
    Publication(
        entity_id="sensor.borg_queue",
        state="0",
        attributes={
            "friendly_name": "Borg queue",
            "icon": "mdi:tray-full",
            "requested": [],
            "round_robin": [],
        },
    ),
    Publication(
        entity_id="sensor.borg_failing",
        state="0",
        attributes={"friendly_name": "Borg failing drones", "icon": "mdi:alert", "drones": []},
    ),
]

BUSY_COORDINATOR = [
    Publication(
        entity_id="sensor.borg_active",
        state="nas: create, pc: prune",
        attributes={
            "friendly_name": "Borg active",
            "icon": "mdi:run",
            "drones": ["nas", "pc"],
            "operations": ["create", "prune"],
            "global_mode": "paused",
        },
    ),
    Publication(
        entity_id="sensor.borg_queue",
        state="2",
        attributes={
            "friendly_name": "Borg queue",
            "icon": "mdi:tray-full",
            "requested": ["nas: stats", "pc: scheduled"],
            "round_robin": ["pc", "nas"],
        },
    ),
    Publication(
        entity_id="sensor.borg_failing",
        state="1",
        attributes={
            "friendly_name": "Borg failing drones",
            "icon": "mdi:alert",
            "drones": ["pc"],
        },
    ),
]
