"""A Lovelace dashboard for the configured drones, built from the entity descriptions, so the
dashboard and the entities can never disagree.

One ``sections`` view: the coordinator's section, then one per drone and per offsite target. A
phone shows the sections one under another, a wider screen side by side. A drone's section
reads top-down in the order of ``entities.Section``: its status, then what went wrong (long
texts, so a markdown card that wraps them, shown only while there is something to say), then
one card with its buttons, settings, repository and diagnostics under short headings. The
entity ids follow the configured backend (helpers, or MQTT entities in other domains).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from . import entities
from .config import Config, EntityBackend
from .entities import PROBLEM_SENSOR, EntityDescription, Section
from .offsite_entities import TARGET_HELPERS, TARGET_SENSORS

MAX_COLUMNS = 3  # sections side by side on a wide screen; a phone always shows one
# A text sensor in one of these states has nothing to say (``none``: no error, no hint).
QUIET_STATES = ("none", "unknown", "unavailable", "")


def dashboard(config: Config, title: str = "Backups") -> dict[str, Any]:
    prefix, backend = config.entity_prefix, config.entities
    sections = (
        [coordinator_section(prefix, backend)]
        + [drone_section(prefix, d.name, backend) for d in config.drones]
        + [target_section(prefix, t.name, backend) for t in config.offsite]
    )
    view = {
        "title": title,
        "path": "backups",
        "type": "sections",
        "max_columns": MAX_COLUMNS,
        "sections": sections,
    }
    return {"title": title, "views": [view]}


def coordinator_entities() -> tuple[EntityDescription, ...]:
    """The coordinator's entities as its card reads top-down: the mode, what runs and how far
    it got, what waits, what fails."""
    active, *others = entities.COORDINATOR_SENSORS
    return (*entities.COORDINATOR_HELPERS, active, entities.PROGRESS_SENSOR, *others)


def coordinator_section(prefix: str, backend: EntityBackend) -> dict[str, Any]:
    rows = [_row(d.entity_id(prefix, None, backend), d.label) for d in coordinator_entities()]
    return _section(
        f"{entities.title(prefix)} coordinator",
        "mdi:backup-restore",
        [{"type": "entities", "state_color": True, "entities": rows}],
    )


def drone_descriptions() -> tuple[EntityDescription, ...]:
    """Every entity of a drone (read when called: the tables are the catalogue)."""
    return (*entities.DRONE_SENSORS, *entities.DRONE_BUTTONS, *entities.DRONE_HELPERS)


def drone_section(prefix: str, drone: str, backend: EntityBackend) -> dict[str, Any]:
    return _section(drone, "mdi:server", _cards(prefix, drone, backend, drone_descriptions()))


def target_section(prefix: str, target: str, backend: EntityBackend) -> dict[str, Any]:
    """An offsite target's section: laid out like a drone's."""
    descriptions = (*TARGET_SENSORS, *TARGET_HELPERS)
    return _section(
        target, "mdi:cloud-upload-outline", _cards(prefix, target, backend, descriptions)
    )


def _section(heading: str, icon: str, cards: list[dict[str, Any]]) -> dict[str, Any]:
    title = {"type": "heading", "heading": heading, "heading_style": "title", "icon": icon}
    return {"type": "grid", "cards": [title, *cards]}


def _cards(
    prefix: str, owner: str, backend: EntityBackend, descriptions: Sequence[EntityDescription]
) -> list[dict[str, Any]]:
    """The owner's cards, section by section: rows of an entities card, each section after the
    first under its heading; the problem's texts end that card and get a card of their own.
    A section that opens a card is headed by a subtitle above it: HA's section row draws a
    divider first, which at a card's top is a blank strip."""

    def entity_id(description: EntityDescription) -> str:
        return description.entity_id(prefix, owner, backend)

    cards: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    for section in Section:
        chosen = [d for d in descriptions if d.section is section]
        if section is Section.PROBLEM:
            cards.append(_entities_card(rows))
            rows = []
            problem = entity_id(PROBLEM_SENSOR) if PROBLEM_SENSOR in descriptions else None
            cards.append(_problem_card(problem, [(d.label, entity_id(d)) for d in chosen]))
            continue
        if chosen and section.value:
            if rows:
                rows.append({"type": "section", "label": section.value})
            else:
                cards.append(_subtitle(section.value))
        rows += [_row(entity_id(d), d.label) for d in chosen]
    cards.append(_entities_card(rows))
    return [card for card in cards if card]


def _subtitle(text: str) -> dict[str, Any]:
    return {"type": "heading", "heading": text, "heading_style": "subtitle"}


def _entities_card(rows: list[dict[str, str]]) -> dict[str, Any]:
    """An entities card of these rows; nothing (an empty dict) without rows."""
    return {"type": "entities", "state_color": True, "entities": rows} if rows else {}


def _problem_card(problem: str | None, texts: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The problem's reason and each text (label, entity id) in full, wrapped: a markdown card
    shown only while the problem is on or a text has something to say."""
    lines: list[str] = []
    shown_when: list[dict[str, Any]] = []
    if problem is not None:
        reason = _plain(f"state_attr('{problem}', 'reason')")
        lines.append(f"{{% if is_state('{problem}', 'on') %}}**Problem:** {reason}{{% endif %}}")
        shown_when.append({"condition": "state", "entity": problem, "state": "on"})
    for label, entity_id in texts:
        lines.append(
            f"{{% set text = states('{entity_id}') %}}{{% if text not in {list(QUIET_STATES)} %}}"
            f"**{_name(label)}:** {_plain('text')}{{% endif %}}"
        )
        shown_when.append(
            {"condition": "state", "entity": entity_id, "state_not": list(QUIET_STATES)}
        )
    if not shown_when:
        return {}
    return {
        "type": "conditional",
        "conditions": [{"condition": "or", "conditions": shown_when}],
        "card": {"type": "markdown", "content": "\n\n".join(lines)},
    }


def _plain(expression: str) -> str:
    """A template printing ``expression`` with ``[`` escaped: a drone's text (an error naming
    a file) must not become a link or an image the browser loads."""
    return f"{{{{ {expression} | replace('[', '\\\\[') }}}}"


def _row(entity_id: str, label: str) -> dict[str, str]:
    return {"entity": entity_id, "name": _name(label)}


def _name(label: str) -> str:
    return label[:1].upper() + label[1:]
