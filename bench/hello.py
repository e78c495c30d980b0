"""One hello over SSH, and what its fixed cost is made of, for two drone accounts.

``transport.run_agent(target, "hello", hello_job())`` is the cheapest complete agent session:
connect, verify the host key, authenticate, start the forced command through the account's
login shell, start Python, run the agent (which answers hello), close.
The agent is a copy of the checkout's, as installed on a drone host. Beside it, each part
is measured on its own through a real OpenSSH sshd on 127.0.0.1 whose key forces:

- nothing at all (``transport.open_connection`` and ``close_connection`` only): connect + auth;
- ``/bin/true``: adds the session and the account's login shell running the forced command;
- ``python3 -c pass``: adds the start of the interpreter the agent runs with;
- the agent: adds the agent's own work (its imports, reading the job, answering hello).

Locally, without SSH: ``borg --version`` (what the agent would pay per start without its cache
of borg's version) and the agent's hello started as sshd starts it. Every measurement runs
once per round, interleaved, the order rotating; the table shows medians, ranges, and the parts
as differences of medians.

Two accounts: the one running the benchmark (root here: bash, whose ~/.bashrc may do a lot)
and a dedicated system account with /bin/sh, created for the run and removed afterwards. The
target is judged on the dedicated account: what a drone host set up as documented has.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import asyncssh

from backup_coordinator.jobs import hello_job
from backup_coordinator.protocol import Hello, Result, parse_line
from backup_coordinator.transport import close_connection, open_connection, run_agent
from bench.accounts import (
    Account,
    dedicated_account,
    drone_python,
    installed_agent,
    this_account,
)
from bench.common import (
    BenchError,
    argument_parser,
    bench_root,
    median,
    progress,
    rounds_of,
    run_main,
    spread,
    table,
    verdict,
)
from devstack.sshd import LoopbackDrone

TARGET_SECONDS = 0.25

CONNECT = "connect + auth + close (asyncssh)"
SHELL = "session + login shell (forced /bin/true)"
PYTHON = "session + shell + python3 -c pass"
HELLO = "hello over ssh (run_agent)"
REMOTE = (CONNECT, SHELL, PYTHON, HELLO)
BORG_VERSION = "borg --version (local)"
LOCAL_HELLO = "agent hello, local (no ssh)"
LOCAL = (BORG_VERSION, LOCAL_HELLO)

Measurements = dict[tuple[str, str], list[float]]  # (account or "local", what) -> seconds


class AccountDrones:
    """Three loopback sshds for one account, forcing /bin/true, Python, and the agent."""

    def __init__(self, root: Path, account: Account, stack: ExitStack) -> None:
        self.account = account
        self.agent = agent = installed_agent(root)
        commands = {
            SHELL: ["/bin/true"],
            PYTHON: [drone_python(), "-c", "pass"],
            HELLO: agent,
        }
        self.sshd: dict[str, LoopbackDrone] = {}
        for what, command in commands.items():
            workdir = root / f"{account.name}-{len(self.sshd)}"
            drone = LoopbackDrone(workdir, command, user=account.name)
            stack.callback(drone.stop)
            self.sshd[what] = drone.start()

    def measurement(self, what: str) -> Callable[[], Awaitable[None]]:
        if what == CONNECT:
            return lambda: connect_only(self.sshd[SHELL])
        if what == HELLO:
            return lambda: hello(self.sshd[HELLO])
        return lambda: session(self.sshd[what])


async def connect_only(drone: LoopbackDrone) -> None:
    connection = await open_connection(drone.target())
    await close_connection(connection)


async def session(drone: LoopbackDrone) -> None:
    connection = await open_connection(drone.target())
    try:
        done = await connection.run("probe", stdin=asyncssh.DEVNULL, check=False)
    finally:
        await close_connection(connection)
    if done.exit_status != 0:
        raise BenchError(f"the forced command exited with {done.exit_status}: {done.stderr!r}")


async def hello(drone: LoopbackDrone) -> None:
    result = await run_agent(drone.target(), "hello", hello_job())
    if not result.ok:
        raise BenchError(f"hello failed: {result}")


def borg_version() -> None:
    subprocess.run(["borg", "--version"], capture_output=True, check=True, stdin=subprocess.DEVNULL)


def local_hello(agent: list[str]) -> None:
    """The agent as sshd starts it, with the hello job on stdin; it must answer hello + ok."""
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": "hello"}
    done = subprocess.run(
        agent,
        input=json.dumps(hello_job()) + "\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    events = [parse_line(line) for line in done.stdout.splitlines() if line.strip()]
    if not events or not isinstance(events[0], Hello) or not isinstance(events[-1], Result):
        raise BenchError(f"the local agent did not answer hello: {done.stdout!r} {done.stderr!r}")


async def run_rounds(drones: Sequence[AccountDrones], rounds: int) -> Measurements:
    measured: Measurements = {}
    steps: list[tuple[str, str, Callable[[], Awaitable[None]]]] = [
        (d.account.name, what, d.measurement(what)) for d in drones for what in REMOTE
    ]
    for _, _, step in steps:  # warm-up, not counted: imports, first key exchange
        await step()
    local: list[tuple[str, Callable[[], None]]] = [
        (BORG_VERSION, borg_version),
        (LOCAL_HELLO, lambda: local_hello(drones[0].agent)),
    ]
    for number in range(rounds):
        shift = number % len(steps)
        for account, what, step in [*steps[shift:], *steps[:shift]]:
            start = time.perf_counter()
            await step()
            measured.setdefault((account, what), []).append(time.perf_counter() - start)
        for what, run in local:
            start = time.perf_counter()
            run()
            measured.setdefault(("local", what), []).append(time.perf_counter() - start)
        hellos = ", ".join(
            f"{d.account.name} {measured[(d.account.name, HELLO)][-1]:.3f} s" for d in drones
        )
        progress(f"round {number + 1}/{rounds}: hello over ssh {hellos}")
    return measured


def report(drones: Sequence[AccountDrones], measured: Measurements, rounds: int) -> str:
    def of(account: str, what: str) -> float:
        return median(measured[(account, what)])

    def cell(account: str, what: str) -> list[str]:
        return [f"{of(account, what):.3f}", spread(measured[(account, what)], 3)]

    header = ["", *(c for d in drones for c in (d.account.label, "range"))]
    rows = [[what, *(c for d in drones for c in cell(d.account.name, what))] for what in REMOTE]
    rows.append(["parts (differences of medians):", *([""] * 2 * len(drones))])
    parts = [
        ("  connect + auth + close", CONNECT, None),
        ("  session + login shell", SHELL, CONNECT),
        ("  python start", PYTHON, SHELL),
        ("  the agent's own work", HELLO, PYTHON),
    ]
    for label, what, before in parts:
        row = [label]
        for d in drones:
            value = of(d.account.name, what) - (of(d.account.name, before) if before else 0)
            row += [f"{value:.3f}", ""]
        rows.append(row)
    for what in LOCAL:
        rows.append([what, *cell("local", what), *([""] * 2 * (len(drones) - 1))])
    judged = drones[-1].account
    value = of(judged.name, HELLO)
    lines = [
        f"hello over ssh and its fixed costs; {rounds} rounds, medians in seconds",
        f"agent: {shlex.join(drones[0].agent)}",
        "",
        *table(header, rows, 42),
        "",
        "local rows run as this process's account, without ssh; the agent caches borg's version "
        "per binary, so its hello runs no borg once the cache is warm.",
        f"target hello over ssh <= {TARGET_SECONDS:.2f} s, judged on {judged.label}: "
        f"{value:.3f} s {verdict(value <= TARGET_SECONDS)}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(
        "bench/hello.py", "One hello over SSH and its fixed costs, for two drone accounts."
    )
    args = parser.parse_args(argv)
    rounds = rounds_of(args, quick=5, full=20)

    def body() -> str:
        with bench_root("hello", args.workdir) as root, ExitStack() as stack:
            account = stack.enter_context(dedicated_account(root / "home"))
            drones = [AccountDrones(root, a, stack) for a in (this_account(), account)]
            measured = asyncio.run(run_rounds(drones, rounds))
            return report(drones, measured, rounds)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
