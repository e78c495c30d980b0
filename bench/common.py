"""What every benchmark shares: options, the temporary root, figures, the machine line.

Figures are medians over interleaved rounds with their min-max range (the noise), printed
beside their targets; ratios compare medians measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import asyncssh

MB = 1_000_000  # as borg counts, and as --size-mb means


class BenchError(RuntimeError):
    """A run that did not do what the benchmark needs: the whole benchmark fails."""


def progress(text: str) -> None:
    """A progress line on stderr; figures go to stdout."""
    print(text, file=sys.stderr, flush=True)


# --- options and life cycle ------------------------------------------------------------------


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--quick", action="store_true", help="smaller data and fewer rounds (a quick look)"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default depends on --quick)")
    parser.add_argument(
        "--workdir", type=Path, help="where the temporary directory goes (default: system temp)"
    )
    return parser


def rounds_of(args: argparse.Namespace, quick: int, full: int) -> int:
    rounds = args.rounds if args.rounds is not None else (quick if args.quick else full)
    if rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    return int(rounds)


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so servers are stopped and temp data removed."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


@contextmanager
def bench_root(name: str, workdir: Path | None) -> Iterator[Path]:
    """A new temporary directory, removed at the end (also on Ctrl-C or SIGTERM).

    Readable by everyone (0755): a drone account other than root has to reach its files.
    """
    root = Path(tempfile.mkdtemp(prefix=f"backup-coordinator-{name}-", dir=workdir))
    root.chmod(0o755)
    try:
        yield root
    finally:
        remove_tree(root)


def remove_tree(path: Path) -> None:
    # An agent stopped mid-run may still be writing its checkpoint for a moment.
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.25)
    progress(f"warning: could not remove {path}")


def run_main(body: Callable[[], str]) -> int:
    """Runs one benchmark: its report to stdout; a BenchError is a loud failure (exit 1)."""
    stop_on_sigterm()
    load = os.getloadavg()[0]
    started = time.monotonic()
    try:
        report = body()
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report)
    print(f"machine: {machine_line(load)}; took {time.monotonic() - started:.0f} s", flush=True)
    return 0


# --- figures ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (p95: fraction 0.95)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], first_width: int) -> list[str]:
    """Left-aligned first column, right-aligned figures."""
    widths = [first_width] + [
        max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(1, len(header))
    ]

    def line(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        rest = "  ".join(f"{cell:>{widths[i + 1]}}" for i, cell in enumerate(cells[1:]))
        return f"{first}  {rest}".rstrip()

    text = [line(header)]
    text.append("-" * len(text[0]))
    text += [line(row) for row in rows]
    return text


# --- the machine -----------------------------------------------------------------------------


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_line(load: float) -> str:
    cpus = len(os.sched_getaffinity(0))
    borg = command_output(["borg", "--version"])
    ssh = command_output(["ssh", "-V"]).split(",")[0]
    return (
        f"{cpus} CPUs, {cpu_model()}, Linux {platform.release()}; {borg}, "
        f"Python {platform.python_version()}, {ssh}, asyncssh {asyncssh.__version__}; "
        f"load average at start {load:.2f}"
    )
