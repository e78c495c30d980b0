"""How fast the app starts, and how much memory AppDaemon needs, with many drones.

For each number of drones N a fresh Home Assistant (devstack) gets an AppDaemon running the app
with N drones in ``manual`` mode (nothing is ever backed up, so only start-up and publishing
count). Each start is timed from launching AppDaemon until the app has logged that it watches
its N drones and every entity of the N drones and of the coordinator is present in HA:

- ``first start``: HA has none of the app's helpers yet (they are created);
- ``next start``: AppDaemon stopped and started again, HA untouched: helpers and sensors
  present (what restarting AppDaemon or reloading the app costs);
- ``after an HA restart``: AppDaemon stopped, HA restarted (helpers persist, the app's sensors
  are gone), AppDaemon started: every sensor is published again.

AppDaemon's resident memory (VmRSS) is read once the first start is complete and compared with
an AppDaemon running the app with one drone: the difference per 100 drones is what a drone
costs. Each figure is printed beside its target. Everything listens on free ports of 127.0.0.1
and is stopped by its PID. Run it as
``PYTHONPATH=scripts:apps .venv/bin/python bench/scale.py [--quick]`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from backup_coordinator.entities import (
    DroneSnapshot,
    coordinator_helpers,
    coordinator_sensors,
    drone_helpers,
    drone_sensors,
    progress_sensor,
)
from backup_coordinator.model import DroneSettings, Mode
from devstack.appdaemon import AppDaemon
from devstack.haclient import HaClient
from devstack.homeassistant import HomeAssistant
from devstack.waiting import async_wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HA_VERSION = "2025.4.4"
DEFAULT_HASS = (
    Path.home() / ".cache" / "backup-coordinator" / f"homeassistant-{HA_VERSION}" / "bin" / "hass"
)
DEFAULT_APPDAEMON = PROJECT_ROOT / ".venv" / "bin" / "appdaemon"
PREFIX = "backup"
BASELINE_PREFIX = "baseline"  # its entities never count as present for the measured app
MIB = 1024 * 1024
FULL_SIZES = (200, 1000)
QUICK_SIZES = (200,)
# N -> (first start s, start with helpers present s): the targets the app is built to meet.
START_TARGETS = {200: (6.0, 3.0), 1000: (30.0, 15.0)}
RSS_PER_100_TARGET_MIB = 10.0
# AppDaemon's log lines start with their time (appdaemon.yaml of the devstack: UTC).
LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+) ", re.MULTILINE)

FIRST = "first start (no helpers)"
NEXT = "next start (helpers present)"
AFTER_HA_RESTART = "after an HA restart (no sensors)"


class BenchError(RuntimeError):
    """A start that did not complete (timeout, AppDaemon exited)."""


@dataclass(frozen=True)
class Start:
    seconds: float
    appdaemon_cpu: float  # CPU seconds AppDaemon used from its launch to the end of the start
    home_assistant_cpu: float  # and Home Assistant in the same time
    rss_mib: float


@dataclass
class SizeResult:
    drones: int
    starts: dict[str, Start | str] = field(default_factory=dict)  # or why it failed
    dump_mib: float | None = None


# --- the app's configuration and entities ----------------------------------------------------


def drone_names(count: int) -> list[str]:
    return [f"d{index:04d}" for index in range(1, count + 1)]


def apps_yaml(count: int, state_file: Path, keys_dir: Path, prefix: str) -> str:
    """N drones in manual mode: their helpers and sensors exist, nothing ever runs."""
    app = {
        "module": "backup_coordinator.app",
        "class": "BackupCoordinator",
        "entity_prefix": prefix,
        "state_file": str(state_file),
        "ssh": {
            "client_key": str(keys_dir / "id_ed25519"),
            "known_hosts": str(keys_dir / "known_hosts"),
        },
        "drones": {
            name: {
                "host": "127.0.0.1",
                "repository": f"/srv/borg/{name}",
                "paths": ["/srv/data"],
                "mode": "manual",
            }
            for name in drone_names(count)
        },
    }
    return yaml.safe_dump({"backup_coordinator": app}, sort_keys=False)


def expected_entities(count: int, prefix: str) -> set[str]:
    """Every entity id the app owns with `count` drones, from the entity catalogue."""
    settings = DroneSettings(mode=Mode.MANUAL)
    ids = {helper.entity_id for helper in coordinator_helpers(prefix)}
    ids.add(progress_sensor(prefix, None).entity_id)
    ids.update(p.entity_id for p in coordinator_sensors(prefix, {}, [], [], [], "running"))
    for name in drone_names(count):
        ids.update(helper.entity_id for helper in drone_helpers(prefix, name, settings))
        ids.update(p.entity_id for p in drone_sensors(prefix, DroneSnapshot.empty(name)))
    return ids


# --- one timed start ------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a running process."""
    if pid is None:
        raise BenchError("the process is not running")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | None) -> float:
    if pid is None:
        raise BenchError("the process is not running")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for PID {pid}")


def logged_at(appdaemon: AppDaemon, text: str) -> float:
    """The time (epoch seconds) of the last main-log line containing `text`."""
    lines = [line for line in appdaemon.main_log().splitlines() if text in line]
    match = LOG_TIME.match(lines[-1]) if lines else None
    if match is None:
        raise BenchError(f"no timed log line with {text!r}")
    return datetime.fromisoformat(match.group(1) + "+00:00").timestamp()


async def timed_start(
    appdaemon: AppDaemon, client: HaClient, expected: set[str], drones: int, timeout: float
) -> float:
    """Seconds from launching AppDaemon until the app watches its drones and HA has every
    entity in `expected`. Its log and HA's states are polled, so the bench adds little load."""
    ready_text = f"watching {drones} drone(s)"
    launched = time.time()
    mark = appdaemon.launch()
    deadline = time.monotonic() + timeout

    async def ready() -> bool:
        return appdaemon.logged(ready_text, mark)

    async def all_present() -> bool:
        present = {state["entity_id"] for state in await client.get_states()}
        return expected <= present

    try:
        await async_wait_until(ready, "the app to start", timeout, interval=0.05)
        ready_at = logged_at(appdaemon, ready_text)
        if await all_present():
            return ready_at - launched
        remaining = deadline - time.monotonic()
        await async_wait_until(all_present, "every entity in HA", remaining, interval=0.2)
    except TimeoutError as error:
        raise BenchError(str(error)) from None
    return time.time() - launched


async def state_dump_mib(client: HaClient) -> float:
    """The size of HA's full state dump, AppDaemon's first message after connecting."""
    states = await client.ws_command("get_states")
    return len(json.dumps(states)) / MIB


# --- one size ---------------------------------------------------------------------------------


@dataclass
class Bench:
    root: Path
    hass_bin: Path
    appdaemon_bin: Path
    app_source: Path
    timeout: float

    @contextmanager
    def home_assistant(self, name: str) -> Iterator[HomeAssistant]:
        ha = HomeAssistant(self.root / name / "homeassistant", self.hass_bin)
        ha.write_config()
        with ha.running():
            yield ha

    def appdaemon(
        self, ha: HomeAssistant, name: str, drones: int, prefix: str = PREFIX
    ) -> AppDaemon:
        folder = self.root / name
        keys = folder / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        return AppDaemon(
            folder / "appdaemon",
            self.appdaemon_bin,
            ha.url,
            ha.ensure_token(),
            apps_source=self.app_source,
            apps_yaml=apps_yaml(drones, folder / "state.json", keys, prefix),
        )

    async def start_and_stop(
        self,
        appdaemon: AppDaemon,
        ha: HomeAssistant,
        client: HaClient,
        drones: int,
        prefix: str = PREFIX,
    ) -> Start:
        expected = expected_entities(drones, prefix)
        ha_cpu_before = cpu_seconds(ha.pid)
        try:
            seconds = await timed_start(appdaemon, client, expected, drones, self.timeout)
            return Start(
                seconds,
                cpu_seconds(appdaemon.pid),
                cpu_seconds(ha.pid) - ha_cpu_before,
                rss_mib(appdaemon.pid),
            )
        finally:
            await appdaemon.async_stop()

    async def baseline_rss(self, ha: HomeAssistant, client: HaClient) -> float:
        """AppDaemon with the app and one drone: what every size's RSS is compared with."""
        appdaemon = self.appdaemon(ha, "baseline", 1, BASELINE_PREFIX)
        start = await self.start_and_stop(appdaemon, ha, client, 1, BASELINE_PREFIX)
        return start.rss_mib

    async def size(self, drones: int, with_baseline: bool) -> tuple[SizeResult, float | None]:
        result = SizeResult(drones)
        baseline = None
        name = f"n{drones}"
        progress(f"{drones} drones: starting a fresh Home Assistant")
        with self.home_assistant(name) as ha:
            async with HaClient(ha.url, ha.ensure_token()) as client:
                if with_baseline:
                    progress("baseline: AppDaemon with one drone")
                    baseline = await self.baseline_rss(ha, client)
                appdaemon = self.appdaemon(ha, name, drones)
                for start in (FIRST, NEXT, AFTER_HA_RESTART):
                    if start == AFTER_HA_RESTART:
                        await ha.async_restart()
                    progress(f"{drones} drones: {start}")
                    try:
                        figures = await self.start_and_stop(appdaemon, ha, client, drones)
                    except BenchError as error:
                        progress(f"  failed: {error}")
                        result.starts[start] = "failed"
                        continue
                    result.starts[start] = figures
                    progress(f"  {figures.seconds:.2f} s")
                result.dump_mib = await state_dump_mib(client)
        return result, baseline


# --- report -----------------------------------------------------------------------------------


def start_cells(start: Start | str | None) -> tuple[str, str]:
    """(measured, CPU) cells of one start."""
    if not isinstance(start, Start):
        return start or "-", "-"
    return (
        f"{start.seconds:.2f} s",
        f"{start.appdaemon_cpu:.1f} s / {start.home_assistant_cpu:.1f} s",
    )


def report(results: list[SizeResult], baseline: float | None, load: float) -> str:
    rows = [("drones", "measure", "measured", "target", "CPU AppDaemon / HA")]
    for result in results:
        n = str(result.drones)
        first, present = START_TARGETS.get(result.drones, (None, None))
        targets = {FIRST: first, NEXT: present, AFTER_HA_RESTART: present}
        for start, target in targets.items():
            measured, cpu = start_cells(result.starts.get(start))
            target_text = f"<= {target:g} s" if target is not None else "-"
            rows.append((n, f"start: {start}", measured, target_text, cpu))
        first_start = result.starts.get(FIRST)
        if isinstance(first_start, Start):
            rss = first_start.rss_mib
            rows.append((n, "AppDaemon RSS after the first start", f"{rss:.1f} MiB", "-", ""))
            if baseline is not None:
                per_100 = (rss - baseline) / (result.drones - 1) * 100
                target_text = f"<= {RSS_PER_100_TARGET_MIB:g} MiB"
                rows.append((n, "RSS per 100 drones", f"{per_100:.1f} MiB", target_text, ""))
        if result.dump_mib is not None:
            rows.append((n, "HA state dump (websocket)", f"{result.dump_mib:.2f} MiB", "-", ""))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    header = [
        "backup_coordinator start-up and memory with N drones (manual mode)",
        f"machine: {os.cpu_count()} CPUs, load average at start {load:.2f}",
        "baseline: AppDaemon with the app and 1 drone: "
        + (f"{baseline:.1f} MiB RSS" if baseline is not None else "not measured"),
        "",
    ]
    footer = [
        "",
        "start: AppDaemon launched -> the app logged 'watching N drone(s)' and every entity of",
        "the N drones and the coordinator is in HA; CPU: seconds each process used meanwhile;",
        "RSS per 100 drones: (RSS - baseline) / (N - 1) * 100",
    ]
    return "\n".join(header + lines + footer)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- main -------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scale.py",
        description="Start-up time and memory of the app with many drones (real HA and "
        "AppDaemon of the devstack).",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SIZES} drones only (about a minute)"
    )
    parser.add_argument(
        "--drones", type=int, nargs="+", help=f"numbers of drones (default {FULL_SIZES})"
    )
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds one start may take (default 180)"
    )
    parser.add_argument(
        "--app-source",
        type=Path,
        default=PROJECT_ROOT / "apps" / "backup_coordinator",
        help="the app package to measure (default: this checkout's)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the temporary directory goes (default: system temp)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs) at the end"
    )
    args = parser.parse_args(argv)
    if args.drones is None:
        args.drones = list(QUICK_SIZES if args.quick else FULL_SIZES)
    if min(args.drones) < 2:
        parser.error("--drones: at least 2 (one drone is the baseline)")
    return args


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so servers are stopped and temp data removed."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def binary(env_var: str, default: Path) -> Path:
    path = Path(os.environ.get(env_var) or default)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run scripts/test once (it installs the stack)")
    return path


async def run(args: argparse.Namespace, root: Path) -> tuple[float | None, list[SizeResult]]:
    """(baseline RSS, one result per size)."""
    bench = Bench(
        root,
        binary("BACKUP_COORDINATOR_HASS", DEFAULT_HASS),
        binary("BACKUP_COORDINATOR_APPDAEMON", DEFAULT_APPDAEMON),
        args.app_source,
        args.timeout,
    )
    results: list[SizeResult] = []
    baseline = None
    for index, drones in enumerate(args.drones):
        result, measured = await bench.size(drones, with_baseline=index == 0)
        baseline = measured if measured is not None else baseline
        results.append(result)
    return baseline, results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    stop_on_sigterm()
    load = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="backup-coordinator-scale-", dir=args.workdir))
    started = time.monotonic()
    try:
        baseline, results = asyncio.run(run(args, root))
    finally:
        if args.keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(report(results, baseline, load))
    print(f"(took {time.monotonic() - started:.0f} s)")
    failed = any(isinstance(start, str) for r in results for start in r.starts.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
