"""One scheduler decision over 1000 drones: ``scheduler.decide`` on a realistic mix.

The coordinator asks the scheduler on every tick and whenever an operation ends or a button is
pressed, so a decision must stay cheap however many drones there are. The drones are a seeded
mix: 70 % scheduled, 20 % manual, 10 % disabled; of the scheduled ones about a quarter due,
some backing off after failures; a few busy; 3 % with pending requests; groups of drones
sharing a repository. Each sample is one call of ``decide`` with the cursor where the previous
call left it (as the coordinator does); the table shows the median and p95 of the samples.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from backup_coordinator import scheduler
from backup_coordinator.model import Mode, Operation
from bench.common import (
    BenchError,
    argument_parser,
    median,
    percentile,
    progress,
    rounds_of,
    run_main,
    verdict,
)

TARGET_MS = 2.0
MAX_CONCURRENT = 4
REQUESTABLE = tuple(Operation)  # whatever a button can ask for


def drone_views(count: int, now: datetime, seed: int) -> list[scheduler.WorkView]:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    views = []
    for index in range(count):
        mode = rng.choices([Mode.SCHEDULED, Mode.MANUAL, Mode.DISABLED], [70, 20, 10])[0]
        frequency = timedelta(minutes=rng.choice([60, 360, 1440, 1440, 10080]))
        # About a quarter is due (last backup more than a frequency ago), some never ran.
        age = frequency * rng.choice([0.1, 0.5, 0.9, 1.5]) if rng.random() > 0.02 else None
        failing = rng.random() < 0.05
        views.append(
            scheduler.WorkView(
                name=f"drone{index:04d}",
                repositories=frozenset({f"nas{index % 400:03d}:/backups/{index % 400:03d}"}),
                mode=mode,
                frequency=frequency,
                busy=index % 400 == 7,  # a few drones are running an operation
                last_success=None if age is None else now - age,
                backoff_until=now + timedelta(minutes=rng.choice([-5, 10])) if failing else None,
                pending=(rng.choice(REQUESTABLE),) if rng.random() < 0.03 else (),
            )
        )
    return views


def measure(views: Sequence[scheduler.WorkView], now: datetime, samples: int) -> list[float]:
    """Milliseconds of each call of ``decide``."""
    cursor = 0
    timings = []
    for _ in range(samples):
        start = time.perf_counter()
        decision = scheduler.decide(views, cursor, now, MAX_CONCURRENT)
        timings.append((time.perf_counter() - start) * 1000)
        cursor = decision.cursor
    if not decision.starts:
        raise BenchError("the mix starts nothing: not a realistic decision")
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(
        "bench/scheduler_decision.py", "One scheduler decision over 1000 drones."
    )
    parser.add_argument("--drones", type=int, default=1000, help="number of drones (1000)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rounds = rounds_of(args, quick=3, full=10)
    samples_per_round = 200

    def body() -> str:
        now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
        views = drone_views(args.drones, now, args.seed)
        measure(views, now, 20)  # warm-up
        timings: list[float] = []
        for number in range(rounds):
            timings += measure(views, now, samples_per_round)
            progress(f"round {number + 1}/{rounds}: median {median(timings):.3f} ms")
        p50, p95 = median(timings), percentile(timings, 0.95)
        due = sum(scheduler.is_due(view, now) for view in views)
        pending = sum(bool(view.pending) for view in views)
        busy = sum(view.busy for view in views)
        return "\n".join(
            [
                f"scheduler decision over {args.drones} drones; {len(timings)} decisions",
                f"mix: {due} due, {pending} with a pending request, {busy} busy, "
                f"max_concurrent {MAX_CONCURRENT}",
                f"scheduler.decide: median {p50:.3f} ms, p95 {p95:.3f} ms, "
                f"range {min(timings):.3f}-{max(timings):.3f} ms",
                f"target p95 <= {TARGET_MS:.1f} ms: {verdict(p95 <= TARGET_MS)}",
            ]
        )

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
