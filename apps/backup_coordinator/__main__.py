"""The command line: the core without Home Assistant.

PYTHONPATH=apps python -m backup_coordinator --config apps.yaml doctor [DRONE ...]
PYTHONPATH=apps python -m backup_coordinator --config apps.yaml status
PYTHONPATH=apps python -m backup_coordinator --config apps.yaml run DRONE OPERATION
PYTHONPATH=apps python -m backup_coordinator --config apps.yaml archives DRONE
PYTHONPATH=apps python -m backup_coordinator --config apps.yaml restore DRONE ARCHIVE [PATH ...]
    [--to DIR]
PYTHONPATH=apps python -m backup_coordinator --config apps.yaml drill DRONE
PYTHONPATH=apps python -m backup_coordinator --config apps.yaml dashboard [--json]

Text that comes from a drone (borg's and the agent's messages, file and archive names, errors
recorded in the state file) goes through ``printable`` before it reaches the terminal, so a
file name holding an escape sequence is shown, never obeyed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from . import operations, transport
from .config import Config, ConfigError, DroneConfig, load_config_file
from .dashboard import dashboard
from .entities import iso_or_unknown
from .jobs import agent_operation, build_job, list_job
from .model import Operation, SettingError, format_mib
from .protocol import (
    AgentEvent,
    LogLine,
    OperationFailed,
    Outcome,
    Progress,
    Result,
    StepResult,
    redact,
)
from .store import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` safe for a terminal: every character that is not printable (control
    characters such as ESC, line breaks, bidi overrides, undecodable bytes) shown escaped."""
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def remote(drone: DroneConfig, text: str) -> str:
    """Text a drone sent, as the CLI prints it: its passphrase masked, printable."""
    return printable(redact(text, drone.passphrase))


# doctor's repository check (a stats run) gets this long beyond the drone's lock_wait.
DOCTOR_REPOSITORY_SECONDS = 120


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config_file(Path(args.config), args.app)
    except (ConfigError, OSError) as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "doctor":
        return asyncio.run(doctor(config, args.drones, sys.stdout))
    if args.command == "status":
        return status(config, sys.stdout)
    if args.command in DRONE_COMMANDS:
        drone = config.drone(args.drone)
        if drone is None:
            print(f"unknown or misconfigured drone {args.drone!r}", file=sys.stderr)
            return EXIT_USAGE
        return asyncio.run(_drone_command(args, drone, config))
    document = dashboard(config, args.title)
    print(
        json.dumps(document, indent=2)
        if args.json
        else yaml.dump(document, Dumper=DashboardDumper, sort_keys=False)
    )
    return EXIT_OK


class DashboardDumper(yaml.SafeDumper):
    """YAML for people to read and paste: a multi-line text (a markdown card's template) as a
    literal block rather than a quoted string."""


def _text_node(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    )


DashboardDumper.add_representer(str, _text_node)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backup_coordinator", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the apps.yaml holding the app")
    parser.add_argument("--app", help="the app's name in apps.yaml (default: the only one)")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor_parser = commands.add_parser("doctor", help="check every drone end to end")
    doctor_parser.add_argument("drones", nargs="*", help="only these drones")
    commands.add_parser("status", help="what the coordinator last recorded per drone")
    run_parser = commands.add_parser("run", help="run one operation now, with live progress")
    run_parser.add_argument("drone")
    run_parser.add_argument("operation", choices=[op.value for op in Operation])
    archives_parser = commands.add_parser("archives", help="the drone's archives, newest first")
    archives_parser.add_argument("drone")
    restore_parser = commands.add_parser(
        "restore", help="restore an archive (or some of its paths) on the drone"
    )
    restore_parser.add_argument("drone")
    restore_parser.add_argument("archive", help="an archive name from `archives`, or latest")
    restore_parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="paths inside the archive (default: all of it)"
    )
    restore_parser.add_argument(
        "--to",
        metavar="DIR",
        help="absolute directory on the drone (default: a new one under its restore root)",
    )
    drill_parser = commands.add_parser(
        "drill", help="restore a sample of the latest archive and compare it with the live files"
    )
    drill_parser.add_argument("drone")
    dashboard_parser = commands.add_parser("dashboard", help="print a Lovelace dashboard")
    dashboard_parser.add_argument("--title", default="Backups")
    dashboard_parser.add_argument("--json", action="store_true", help="JSON instead of YAML")
    return parser


# --- doctor -----------------------------------------------------------------------------------


async def doctor(config: Config, only: Sequence[str], out: TextIO) -> int:
    """One line per check and drone; the fix in words for every failure."""
    failures = 0
    for problem in config.problems:
        if not only or problem.drone in only:
            _check_line(
                out, problem.drone, "config", False, f"{problem.key}: {problem.message}", ""
            )
            failures += 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=out)
    for drone in config.drones:
        if only and drone.name not in only:
            continue
        failures += await _doctor_drone(drone, out, config)
    print(f"{'all checks passed' if not failures else f'{failures} check(s) failed'}", file=out)
    return EXIT_OK if not failures else EXIT_FAILED


async def _doctor_drone(drone: DroneConfig, out: TextIO, config: Config) -> int:
    checks = await transport.probe(drone.ssh)
    for check in checks:
        detail, fix = remote(drone, check.detail), remote(drone, check.fix)
        _check_line(out, drone.name, check.name, check.ok, detail, fix)
    if not all(check.ok for check in checks):
        return sum(1 for check in checks if not check.ok)
    deadline = DOCTOR_REPOSITORY_SECONDS + drone.lock_wait
    try:
        async with asyncio.timeout(deadline):
            job = build_job(drone, drone.settings, ("stats",))
            result = await transport.run_agent(drone.ssh, "stats", job, None, config.limits)
    except TimeoutError:
        detail = f"no answer from the agent within {deadline} s"
        fix = f"look for a hung borg or a stuck mount on {drone.ssh.host}"
        _check_line(out, drone.name, "repository", False, detail, fix)
        return 1
    except OperationFailed as failure:
        message, hint = remote(drone, failure.message), remote(drone, failure.hint)
        _check_line(out, drone.name, "repository", False, message, hint)
        return 1
    size = format_mib(result.data.get("deduplicated_size"))
    count = result.data.get("archive_count", "?")
    encryption = result.data.get("encryption")
    mode = encryption.get("mode") if isinstance(encryption, Mapping) else None
    detail = (
        f"{drone.repository}: {count} archive(s) of {drone.archive_prefix}-*, {size} deduplicated"
        + (f", encryption {mode}" if isinstance(mode, str) else "")
    )
    warning = key_warning(drone.repository, encryption)
    _check_line(
        out, drone.name, "repository", True, remote(drone, detail), "", remote(drone, warning)
    )
    return 0


def key_warning(repository: str, encryption: object) -> str:
    """The warning for a repository whose key is a file on the drone (borg's keyfile modes):
    whoever loses the drone loses every archive, unless the key was exported. "" otherwise."""
    if not isinstance(encryption, Mapping):
        return ""
    mode, keyfile = encryption.get("mode"), encryption.get("keyfile")
    if not isinstance(mode, str) or not mode.startswith("keyfile"):
        return ""
    where = f": {keyfile}" if isinstance(keyfile, str) else ""
    return (
        f"the key lives only on the drone (keyfile mode{where}): export it with"
        f" `borg key export {repository} FILE` and keep the file elsewhere;"
        " without it the archives cannot be read"
    )


def _check_line(
    out: TextIO, drone: str, check: str, ok: bool, detail: str, fix: str, warning: str = ""
) -> None:
    """The check's line; under it, indented, the fix of a failure and a passed check's warning."""
    line = f"{drone:<16} {'ok' if ok else 'FAIL':<5} {check:<28} {detail}"
    if fix and not ok:
        line += f"\n{'':<23}fix: {fix}"
    if warning:
        line += f"\n{'':<23}warning: {warning}"
    print(line, file=out)


# --- status -----------------------------------------------------------------------------------


def status(config: Config, out: TextIO) -> int:
    loaded = Store(config.state_file).load(set_aside=False)  # never move the app's file
    if loaded.problem:
        print(f"state file: {loaded.problem}", file=out)
    print(f"coordinator: {loaded.global_mode}; state file {config.state_file}", file=out)
    for drone in config.drones:
        record = loaded.records.get(drone.name)
        if record is None:
            print(f"{drone.name:<16} never run", file=out)
            continue
        sizes = record.repository or {}
        print(
            f"{drone.name:<16} last backup {iso_or_unknown(record.last_backup)},"
            f" last prune {iso_or_unknown(record.last_prune)},"
            f" last verified restore {iso_or_unknown(record.last_drill)},"
            f" last check {iso_or_unknown(record.last_check)},"
            f" {format_mib(sizes.get('deduplicated_size'))} deduplicated,"
            f" {record.consecutive_failures} failure(s) in a row"
            + (f", running {record.running.operation}" if record.running else "")
            + (f", queued {', '.join(record.pending)}" if record.pending else "")
            + (
                f"\n{'':<17}last error ({printable(str(record.last_error_kind))}):"
                f" {printable(record.last_error)}"
                if record.last_error
                else ""
            ),
            file=out,
        )
    for target in config.offsite:
        copy = loaded.copies.get(target.name)
        if copy is None:
            print(f"{target.name:<16} (offsite) never run", file=out)
            continue
        sent = (copy.last_copy_data or {}).get("bytes")
        print(
            f"{target.name:<16} (offsite) last copy {iso_or_unknown(copy.last_copy)},"
            f" {format_mib(sent)} sent, {copy.consecutive_failures} failure(s) in a row"
            + (", running" if copy.running else "")
            + (
                f"\n{'':<17}last error ({printable(str(copy.last_error_kind))}):"
                f" {printable(copy.last_error)}"
                if copy.last_error
                else ""
            ),
            file=out,
        )
    for problem in config.problems:
        print(f"{problem.drone:<16} skipped: {problem.key}: {problem.message}", file=out)
    return EXIT_OK


# --- run --------------------------------------------------------------------------------------


async def run(drone: DroneConfig, operation: Operation, out: TextIO, config: Config) -> int:
    """Runs the operation's steps in one agent session (no schedule, no state file).

    Bounded like the coordinator's sessions: the hello and inactivity limits, and
    ``max_runtime_minutes`` per step.
    """
    terminal = out.isatty()
    steps = operations.spec_of(operation).steps

    def show_line(text: str) -> None:
        print(("\n" if terminal else "") + text, file=out, flush=True)

    async def show(event: AgentEvent) -> None:
        if isinstance(event, Progress) and _streams_progress(event.operation):
            line = (
                f"{event.nfiles} files, {format_mib(event.original_size)} read,"
                f" {format_mib(event.deduplicated_size)} new"
            )
            print(
                f"\r\033[K{line}" if terminal else line,
                end="" if terminal else "\n",
                file=out,
                flush=True,
            )
        elif isinstance(event, LogLine):
            show_line(remote(drone, f"{event.level}: {event.message}"))
        elif isinstance(event, StepResult) and event.ok:
            show_line(remote(drone, _describe(event)))

    print(f"{drone.name}: {', '.join(steps)} ...", file=out)
    try:
        job = build_job(drone, drone.settings, steps)
        async with asyncio.timeout(config.max_runtime_minutes * 60 * len(steps)):
            result = await transport.run_agent(
                drone.ssh, agent_operation(steps), job, show, config.limits
            )
    except TimeoutError:
        show_line(
            f"{drone.name}: {operation.value} failed: ran longer than"
            f" {config.max_runtime_minutes:g} min per step and was stopped"
        )
        return EXIT_FAILED
    except (OperationFailed, SettingError) as error:
        show_line(f"{drone.name}: {operation.value} failed: {remote(drone, str(error))}")
        return EXIT_FAILED
    if len(steps) == 1:  # a single operation's result is its step's result
        show_line(remote(drone, _describe(result)))
    return EXIT_OK


# --- archives, restore, drill --------------------------------------------------------------------

DRONE_COMMANDS = ("run", "archives", "restore", "drill")
# Progress of a restore printed on a plain (non-terminal) stderr at most this often.
RESTORE_PROGRESS_SECONDS = 1.0


async def _drone_command(args: argparse.Namespace, drone: DroneConfig, config: Config) -> int:
    if args.command == "run":
        return await run(drone, Operation(args.operation), sys.stdout, config)
    if args.command == "archives":
        return await archives(drone, sys.stdout, sys.stderr, config)
    if args.command == "restore":
        request = restore_request(args.archive, args.paths, args.to)
        return await restore(drone, request, sys.stdout, sys.stderr, config)
    return await drill(drone, sys.stdout, sys.stderr, config)


async def _run_step(
    drone: DroneConfig,
    step: str,
    errors: TextIO,
    config: Config,
    extra: Mapping[str, Any] | None = None,
    on_event: transport.EventHandler | None = None,
) -> Result | None:
    """Runs one agent operation; on failure prints why (to ``errors``) and returns None."""
    try:
        if step == "list":
            job = list_job(drone)
        else:
            job = build_job(drone, drone.settings, (step,), extra=extra)
        async with asyncio.timeout(config.max_runtime_minutes * 60):
            return await transport.run_agent(drone.ssh, step, job, on_event, config.limits)
    except TimeoutError:
        message = f"ran longer than {config.max_runtime_minutes:g} min and was stopped"
    except (OperationFailed, SettingError) as error:
        message = remote(drone, str(error))
    print(f"{drone.name}: {step} failed: {message}", file=errors, flush=True)
    return None


async def archives(drone: DroneConfig, out: TextIO, errors: TextIO, config: Config) -> int:
    """The archive names of the drone's prefix, newest first."""
    result = await _run_step(drone, "list", errors, config)
    if result is None:
        return EXIT_FAILED
    listed = [a for a in result.data.get("archives") or [] if isinstance(a, dict)]
    for archive in reversed(listed):
        print(remote(drone, str(archive.get("name", ""))), file=out)
    older = operations.count_beyond(result.data, "archive", "archives")
    if older:
        print(f"... and {older} older archive(s), not listed", file=errors)
    return EXIT_OK


def restore_request(archive: str, paths: Sequence[str], to: str | None) -> dict[str, Any]:
    """What the restore command adds to the drone's extract job."""
    request: dict[str, Any] = {"archive": archive}
    if paths:
        request["restore_paths"] = list(paths)
    if to is not None:
        request["destination"] = to
    return request


async def restore(
    drone: DroneConfig, request: Mapping[str, Any], out: TextIO, errors: TextIO, config: Config
) -> int:
    """Restores on the drone with progress on ``errors``; prints the destination on ``out``."""
    terminal = errors.isatty()
    last_shown = [0.0]

    async def show(event: AgentEvent) -> None:
        if isinstance(event, Progress):
            now = time.monotonic()
            if terminal or now - last_shown[0] >= RESTORE_PROGRESS_SECONDS:
                last_shown[0] = now
                line = f"restoring {remote(drone, event.path)}"
                print(
                    f"\r\033[K{line}" if terminal else line,
                    end="" if terminal else "\n",
                    file=errors,
                    flush=True,
                )
        elif isinstance(event, LogLine):
            print(
                ("\n" if terminal else "") + remote(drone, f"{event.level}: {event.message}"),
                file=errors,
                flush=True,
            )

    print(f"{drone.name}: restoring {remote(drone, str(request['archive']))} ...", file=errors)
    result = await _run_step(drone, "extract", errors, config, request, show)
    if terminal:
        print(file=errors)
    if result is None:
        return EXIT_FAILED
    print(remote(drone, _describe(result)), file=errors)
    print(remote(drone, str(result.data.get("destination", ""))), file=out)
    return EXIT_OK


async def drill(drone: DroneConfig, out: TextIO, errors: TextIO, config: Config) -> int:
    """A restore drill on the drone: the verified, skipped and mismatching counts."""

    async def show(event: AgentEvent) -> None:
        if isinstance(event, LogLine):
            print(remote(drone, f"{event.level}: {event.message}"), file=errors, flush=True)

    result = await _run_step(drone, "drill", errors, config, on_event=show)
    if result is None:
        return EXIT_FAILED
    print(remote(drone, _describe(result)), file=out)
    return EXIT_OK


def _streams_progress(step: str) -> bool:
    """Whether the step's progress lines carry create's figures (files, bytes read, new)."""
    known = operations.STEPS.get(step)
    return known is not None and known.streams_progress


def _describe(outcome: Outcome) -> str:
    step = operations.STEPS.get(outcome.operation)
    detail = step.summary(outcome.data) if step else json.dumps(dict(outcome.data))[:200]
    warnings = f" with {outcome.warnings} warning(s)" if outcome.warnings else ""
    return f"{outcome.operation} done in {outcome.duration:.1f} s{warnings}: {detail}"


if __name__ == "__main__":
    sys.exit(main())
