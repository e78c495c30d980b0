"""Relay latency: from a borg progress line to the coordinator, and to Home Assistant.

borg stamps every ``archive_progress`` line with its ``time``; the agent forwards it unchanged
in its progress event. Two paths are measured, each with its own ``create`` of the same data
over a loopback sshd whose key forces the agent:

- ``on-event``: the coordinator in this process (``Coordinator`` + ``transport.run_agent``,
  Home Assistant replaced by the in-memory port of the tests), its runner wrapped so each
  progress event is stamped as it reaches the coordinator's on-event callback;
- ``Home Assistant``: the real stack: Home Assistant, AppDaemon running the app, a button
  press (``input_button.borg_bench_create``) starting the create; each
  ``backup_coordinator_progress`` event is stamped as it arrives on this process's websocket.
  The drone's forced command copies the agent's output to a file with ``tee`` (microseconds
  per line), so every borg line's time is known afterwards.

The coordinator publishes at most one progress update per ``progress_interval``; the lines in
between are not sent. So for Home Assistant two figures: ``relayed lines`` (borg time to the
arrival of the event that carries that very line: the transport's latency) and ``every line``
(borg time to the arrival of the first event carrying that line or a newer one: how stale what
Home Assistant shows can be, the throttle included). The target is judged on ``every line``.

borg writes a progress line every 0.2 s while it works through files (a slow compressor would
space them out: one line per chunk). So the data set is many small files, lz4 as everywhere:
one create then runs for many lines without writing gigabytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_coordinator.config import parse_config
from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import Operation, SshTarget
from backup_coordinator.ports import EVENT_FINISHED, EVENT_PROGRESS
from backup_coordinator.protocol import AgentEvent, Progress, Result
from backup_coordinator.transport import run_agent
from bench.accounts import installed_agent
from bench.common import (
    MB,
    BenchError,
    argument_parser,
    bench_root,
    median,
    percentile,
    progress,
    rounds_of,
    run_main,
    table,
    verdict,
)
from bench.data import DataSet, generate_data
from devstack.appdaemon import AppDaemon
from devstack.borg import PROJECT_ROOT, init_repository
from devstack.drones import LocalDrone, app_config
from devstack.haclient import EventSubscription, HaClient
from devstack.homeassistant import HomeAssistant
from devstack.sshd import LoopbackDrone
from devstack.waiting import async_wait_until, wait_until
from tests.memory_port import MemoryPort

PROGRESS_INTERVAL = 1.0  # seconds, as the demo and the end-to-end tests use
TARGET_SLACK = 0.050  # target: p95 <= progress_interval + 50 ms
COMPRESSION = "lz4"
DRONE = "bench"
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Line:
    """One borg progress line as the agent forwarded it."""

    time: float
    nfiles: int
    original_size: int


@dataclass(frozen=True)
class Arrival:
    """One progress event as it arrived on Home Assistant's websocket."""

    at: float
    nfiles: int
    original_size: int
    final: bool


class BenchDrone:
    """A repository, a borg base dir and a loopback sshd forcing ``command`` (as root)."""

    def __init__(self, root: Path, data: DataSet, command: list[str], stack: ExitStack) -> None:
        self.root = root
        self.data = data
        self.passphrase = secrets.token_urlsafe(16)
        self.sshd = LoopbackDrone(
            root / "ssh", command, env={"BORG_BASE_DIR": str(self.borg_base_dir)}
        )
        stack.callback(self.sshd.stop)
        self.sshd.start()

    @property
    def repository(self) -> Path:
        # Where LocalDrone, which the app's apps.yaml is written from, keeps it.
        return LocalDrone(DRONE, self.root, self.passphrase, self.sshd).repository

    @property
    def borg_base_dir(self) -> Path:
        return self.root / "borg-base"

    def fresh_repository(self) -> None:
        """An empty repository and borg base dir: every create reads and compresses it all."""
        for path in (self.repository, self.borg_base_dir):
            shutil.rmtree(path, ignore_errors=True)
        self.borg_base_dir.mkdir(parents=True)
        init_repository(self.repository, self.passphrase, self.borg_base_dir)


# --- on-event: the coordinator in this process -----------------------------------------------


def stamping_runner(
    latencies: list[float],
) -> Callable[..., Awaitable[Result]]:
    """``run_agent`` whose on-event callback first notes how old each progress line is."""

    async def runner(
        target: SshTarget,
        operation: str,
        job: Mapping[str, Any],
        on_event: Callable[[AgentEvent], Awaitable[None]] | None,
    ) -> Result:
        async def stamped(event: AgentEvent) -> None:
            if isinstance(event, Progress):
                latencies.append(time.time() - event.time)
            if on_event is not None:
                await on_event(event)

        return await run_agent(target, operation, job, stamped)

    return runner


async def on_event_latencies(drone: BenchDrone) -> list[float]:
    target = drone.sshd.target()
    args = {
        "module": "backup_coordinator.app",
        "class": "BackupCoordinator",
        "state_file": str(drone.root / "state.json"),
        "progress_interval": PROGRESS_INTERVAL,
        "drones": {
            DRONE: {
                "host": target.host,
                "port": target.port,
                "user": target.user,
                "client_key": target.client_key,
                "known_hosts": target.known_hosts,
                "repository": str(drone.repository),
                "passphrase": drone.passphrase,
                "paths": [str(drone.data.path)],
                "compression": COMPRESSION,
                "mode": "manual",
            }
        },
    }
    latencies: list[float] = []
    port = MemoryPort()
    coordinator = Coordinator(parse_config(args, drone.root), port, stamping_runner(latencies))
    await coordinator.start({})
    await coordinator.request(DRONE, Operation.CREATE)
    await coordinator.wait_idle()
    finished = port.of(EVENT_FINISHED)
    if len(finished) != 1 or not finished[0].get("ok"):
        raise BenchError(f"in-process create failed: {finished} {port.lines[-5:]}")
    if len(port.of(EVENT_PROGRESS)) < 2:
        raise BenchError("in-process create relayed no progress: make the data bigger")
    return latencies


# --- Home Assistant: the real stack ----------------------------------------------------------


def stack_binary(variable: str) -> Path:
    path = Path(os.environ.get(variable, ""))
    if not path.is_file():
        raise BenchError(f"{variable} does not name a binary: run this through scripts/bench")
    return path


async def collect(subscription: EventSubscription, arrivals: list[Arrival]) -> None:
    """Stamps every progress event of the drone as it arrives; runs until cancelled."""
    while True:
        event = await subscription.next(timeout=3600)
        data = event.get("data", {})
        if data.get("drone") == DRONE:
            arrivals.append(
                Arrival(
                    time.time(),
                    int(data.get("nfiles") or 0),
                    int(data.get("original_size") or 0),
                    bool(data.get("final")),
                )
            )


async def home_assistant_create(ha: HomeAssistant, token: str, timeout: float) -> list[Arrival]:
    """Presses the drone's create button; the progress events until the create finished."""
    arrivals: list[Arrival] = []

    async def final_seen() -> bool:
        return any(arrival.final for arrival in arrivals)

    async with HaClient(ha.url, token) as client:
        await client.wait_for_state(
            f"input_button.borg_{DRONE}_create", lambda _state: True, START_TIMEOUT
        )
        progress_events = await client.subscribe_events(EVENT_PROGRESS)
        finished_events = await client.subscribe_events(EVENT_FINISHED)
        collector = asyncio.create_task(collect(progress_events, arrivals))
        try:
            await client.call_service(
                "input_button", "press", {"entity_id": f"input_button.borg_{DRONE}_create"}
            )
            finished = await finished_events.wait_for(
                lambda event: event.get("data", {}).get("drone") == DRONE, timeout
            )
            await async_wait_until(  # the final one was fired first, but may be queued still
                final_seen, "the final progress event", timeout=10, interval=0.01
            )
        finally:
            collector.cancel()
    if not finished["data"].get("ok"):
        raise BenchError(f"the create started from Home Assistant failed: {finished['data']}")
    return arrivals


def start_app(
    config_dir: Path,
    appdaemon_bin: Path,
    ha: HomeAssistant,
    token: str,
    drone: BenchDrone,
    stack: ExitStack,
) -> None:
    """AppDaemon running the app for the one drone (manual mode: only the button starts it)."""
    local = LocalDrone(DRONE, drone.root, drone.passphrase, drone.sshd)
    settings = {"mode": "manual", "compression": COMPRESSION, "paths": [str(drone.data.path)]}
    apps_yaml, app_secrets = app_config(
        [local],
        config_dir.parent / "app-state.json",
        progress_interval=PROGRESS_INTERVAL,
        drone_settings={DRONE: settings},
    )
    appdaemon = AppDaemon(
        config_dir,
        appdaemon_bin,
        ha.url,
        token,
        apps_source=PROJECT_ROOT / "apps" / "backup_coordinator",
        apps_yaml=apps_yaml,
        secrets=app_secrets,
    )
    stack.callback(appdaemon.stop)
    appdaemon.start()
    appdaemon.wait_for_log("watching 1 drone(s)", START_TIMEOUT)


def tee_command(agent: list[str], output: Path) -> list[str]:
    """The agent with its stdout copied to ``output`` (tee writes each line through at once)."""
    return ["/bin/sh", "-c", f"{shlex.join(agent)} | tee {shlex.quote(str(output))}"]


def teed_lines(output: Path) -> list[Line]:
    """The progress lines of the session the tee copied, once its result line is there."""
    wait_until(lambda: '"result"' in output.read_text(), "the agent's result in the tee file", 10)
    lines = []
    for text in output.read_text().splitlines():
        event = json.loads(text)
        if event.get("type") == "progress":
            lines.append(Line(float(event["time"]), event["nfiles"], event["original_size"]))
    return lines


def staleness(lines: Sequence[Line], arrivals: Sequence[Arrival]) -> tuple[list[float], ...]:
    """(relayed, every line): see the module docstring. Fails on an event no line explains."""
    index_of = {(line.nfiles, line.original_size): i for i, line in enumerate(lines)}
    carried: list[tuple[float, int]] = []  # (arrival, index of the newest line it carries)
    relayed = []
    for arrival in arrivals:
        if arrival.final:
            carried.append((arrival.at, len(lines) - 1))
            continue
        index = index_of.get((arrival.nfiles, arrival.original_size))
        if index is None:
            raise BenchError(f"an event carries no line the agent sent: {arrival}")
        carried.append((arrival.at, index))
        relayed.append(arrival.at - lines[index].time)
    every = []
    for index, line in enumerate(lines):
        first = min((at for at, newest in carried if newest >= index), default=None)
        if first is None:
            raise BenchError(f"no event ever showed progress line {index} ({line})")
        every.append(first - line.time)
    return relayed, every


# --- running and reporting -------------------------------------------------------------------


def quantiles(values: Sequence[float]) -> list[str]:
    return [
        str(len(values)),
        f"{median(values) * 1000:.1f}",
        f"{percentile(values, 0.95) * 1000:.1f}",
        f"{max(values) * 1000:.1f}",
    ]


def report(
    on_event: list[float], relayed: list[float], every: list[float], data: DataSet, rounds: int
) -> str:
    header = ["borg progress line ->", "samples", "p50 ms", "p95 ms", "max ms"]
    rows = [
        ["coordinator's on-event callback", *quantiles(on_event)],
        ["HA websocket event, relayed lines", *quantiles(relayed)],
        ["HA websocket event, every line", *quantiles(every)],
    ]
    limit = PROGRESS_INTERVAL + TARGET_SLACK
    p95 = percentile(every, 0.95)
    return "\n".join(
        [
            f"relay latency of progress; {rounds} create(s) per path, progress_interval "
            f"{PROGRESS_INTERVAL:g} s",
            f"data: {data.describe()}, compression {COMPRESSION}",
            "",
            *table(header, rows, 36),
            "",
            "relayed lines: events carrying that very line; every line: the first event "
            "carrying that line or a newer one.",
            f"target p95 <= progress_interval + {TARGET_SLACK * 1000:.0f} ms = "
            f"{limit * 1000:.0f} ms (every line): {p95 * 1000:.0f} ms {verdict(p95 <= limit)}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(
        "bench/relay_latency.py",
        "Latency from a borg progress line to the coordinator and to Home Assistant.",
    )
    parser.add_argument("--size-mb", type=float, help="data to back up (60; quick 20)")
    parser.add_argument("--files", type=int, help="number of files (40000; quick 15000)")
    args = parser.parse_args(argv)
    rounds = rounds_of(args, quick=1, full=2)
    size_mb = args.size_mb or (20 if args.quick else 60)
    files = args.files or (15000 if args.quick else 40000)

    def body() -> str:
        hass = stack_binary("BACKUP_COORDINATOR_HASS")
        appdaemon_bin = stack_binary("BACKUP_COORDINATOR_APPDAEMON")
        with bench_root("relay", args.workdir) as root, ExitStack() as stack:
            progress(f"generating {size_mb:g} MB in {files} files under {root}")
            data = generate_data(root / "data", int(size_mb * MB), files, 1)
            agent = installed_agent(root)
            direct = BenchDrone(root / "direct", data, agent, stack)
            teed = root / "teed" / "agent-output.jsonl"
            through_ha = BenchDrone(root / "teed", data, tee_command(agent, teed), stack)
            ha = HomeAssistant(root / "homeassistant", hass)
            ha.write_config()
            stack.enter_context(ha.running())
            token = ha.ensure_token()
            start_app(root / "appdaemon", appdaemon_bin, ha, token, through_ha, stack)
            on_event: list[float] = []
            relayed: list[float] = []
            every: list[float] = []
            for number in range(rounds):
                direct.fresh_repository()
                on_event += asyncio.run(on_event_latencies(direct))
                through_ha.fresh_repository()
                arrivals = asyncio.run(home_assistant_create(ha, token, 600))
                lines = teed_lines(teed)
                round_relayed, round_every = staleness(lines, arrivals)
                relayed += round_relayed
                every += round_every
                progress(
                    f"round {number + 1}/{rounds}: {len(lines)} progress lines, "
                    f"{len(arrivals)} events in Home Assistant"
                )
            return report(on_event, relayed, every, data, rounds)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
