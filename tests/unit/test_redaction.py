"""Passphrases never leave the coordinator: not as they are, not escaped, not cut short.

``Redactor`` alone, then a property over arbitrary passphrases: failures and results whose text
carries the passphrase in every escaped and truncated form go through a real coordinator, and
none of it reaches the log, Home Assistant's states, events or notifications, or the state file.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from backup_coordinator.coordinator import Coordinator
from backup_coordinator.model import Operation
from backup_coordinator.protocol import FailureKind, OperationFailed, Result, redact
from backup_coordinator.redaction import MASK, MIN_FRAGMENT, Redactor
from tests.memory_port import MemoryPort
from tests.secret_forms import ENCODINGS, everything_shown, leaks
from tests.unit.test_coordinator import Clock, ScriptedRunner, make_config, ok_result

TRICKY = 'quote\'s "double" back\\slash\\\\ tab\t newline\n é ß 東京 😀 \u200b end'


# --- the redactor alone -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_escaped_form_is_masked(encoding: str) -> None:
    form = ENCODINGS[encoding](TRICKY)
    redacted = Redactor([TRICKY]).text(f"before {form} after")
    assert redacted == f"before {MASK} after"


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("keep", [MIN_FRAGMENT, 20, 41])
def test_a_form_cut_by_a_slice_is_masked_even_inside_an_escape(encoding: str, keep: int) -> None:
    form = ENCODINGS[encoding](TRICKY)
    head_length = len(ENCODINGS[encoding](TRICKY[:keep]))
    for cut in range(head_length, min(head_length + 12, len(form))):  # aligned, then mid-escape
        head = Redactor([TRICKY]).text(f"printed: {form[:cut]}")
        assert leaks(TRICKY, head) == [], head
    tail = Redactor([TRICKY]).text(form[len(form) - head_length :] + " (exit 2)")
    assert tail.endswith(" (exit 2)")
    assert leaks(TRICKY, tail) == [], tail


def test_ordinary_text_is_left_alone() -> None:
    redactor = Redactor(["correct horse battery staple", None, ""])
    text = 'C:\\new\\table "quoted" \\u00e9 \\x41 and a horse'
    assert redactor.text(text) == text


def test_a_short_passphrase_is_masked_where_it_occurs_whole() -> None:
    redactor = Redactor(["pw'1"])
    assert redactor.text("job {'passphrase': \"pw'1\"} or 'pw\\'1' or pw'") == (
        f"job {{'passphrase': \"{MASK}\"}} or '{MASK}' or pw'"
    )


def test_values_are_redacted_deep_and_keys_kept() -> None:
    secret = "s3cret-passphrase"
    value = {"error": {"message": f"x {secret}", "list": [secret, 3, None]}, "rc": 2}
    assert Redactor([secret]).value(value) == {
        "error": {"message": f"x {MASK}", "list": [MASK, 3, None]},
        "rc": 2,
    }


def test_protocol_redact_is_the_strong_one() -> None:
    assert redact(f"printed {json.dumps({'p': TRICKY})!r}", TRICKY) == 'printed \'{"p": "***"}\''
    assert redact("nothing secret", None) == "nothing secret"


# --- the property, through the coordinator ----------------------------------------------------


def failure_text(secret: str) -> str:
    """The secret in every encoding, whole and as slices would cut it at either end."""
    pieces = []
    keep = max(MIN_FRAGMENT, len(secret) // 2)
    for name, encode in ENCODINGS.items():
        form = encode(secret)
        pieces.append(f"{name}: {form}")
        if len(secret) >= MIN_FRAGMENT:
            cut = len(encode(secret[:keep]))
            pieces.append(f"{name} cut: {form[:cut]}")
            pieces.append(f"{name} tail: {form[len(form) - len(encode(secret[-keep:])) :]}")
    return " | ".join(pieces)


async def run_scenario(secret: str, state_dir: Path) -> str:
    """A create whose archive is named with the secret, a prune failing with it everywhere and
    a crash near the job; returns everything that left the coordinator."""
    runner, clock = ScriptedRunner(), Clock()
    config = make_config(state_dir, alpha={"mode": "manual", "passphrase": secret})

    async def create(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        result = ok_result(operation)
        archive = {**result.data["archive"], "name": f"alpha-{secret}"}
        return Result(operation, ok=True, rc=0, data={**result.data, "archive": archive})

    async def prune(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        text = failure_text(secret)
        raise OperationFailed(FailureKind.BORG_ERROR, text, f"hint: {text}", step="prune")

    async def stats(operation: str, job: Mapping[str, Any], on_event: Any) -> Result:
        raise ValueError(f"a bug near {dict(job)} and {json.dumps(dict(job))!r}")

    runner.behaviours.update(
        {("alpha", "create"): create, ("alpha", "prune"): prune, ("alpha", "stats"): stats}
    )
    port = MemoryPort()
    coordinator = Coordinator(config, port, runner, clock=clock, monotonic=clock.monotonic)
    await coordinator.start({})
    for operation in (Operation.CREATE, Operation.PRUNE, Operation.STATS):
        await coordinator.request("alpha", operation)
        await coordinator.wait_idle()
    await coordinator.stop()
    assert runner.operations() == ["create", "prune", "stats"]
    return everything_shown(port, state_dir / "state.json")


def scenario_output(secret: str) -> str:
    with tempfile.TemporaryDirectory() as state_dir:
        return asyncio.run(run_scenario(secret, Path(state_dir)))


# What the coordinator writes anyway (names, times, sizes, its own words): a passphrase made of
# that text cannot be told apart from it.
BASELINE = scenario_output("0nly-a-neutral-passphrase-0")

passphrases = st.text(
    # '*' is the mask itself; NUL and lone surrogates are refused by the configuration.
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00*"),
    min_size=1,
    max_size=300,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(passphrases)
@example(TRICKY)
@example('"' * 12)
@example("\\" * 12)
@example("''\"\"\\\\''\"\"\\\\")
@example("пароль-密码-🔑-contraseña")
@example("long " * 400 + "end")
@example("ab")
def test_no_form_of_a_passphrase_leaves_the_coordinator(secret: str) -> None:
    assume(not leaks(secret, BASELINE))
    output = scenario_output(secret)
    assert leaks(secret, output) == []
