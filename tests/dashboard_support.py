"""Reading a generated Lovelace dashboard back: which entities it shows."""

from __future__ import annotations

import re
from collections.abc import Iterator

# An entity id a markdown card's template reads.
TEMPLATE_ENTITY = re.compile(r"(?:states|is_state|state_attr)\('([a-z_]+\.[a-z0-9_]+)'")


def referenced(value: object) -> Iterator[str]:
    """Every entity id anywhere in a piece of dashboard: rows, conditions, templates."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "entity" and isinstance(item, str):
                yield item
            elif key == "content" and isinstance(item, str):
                yield from TEMPLATE_ENTITY.findall(item)
            else:
                yield from referenced(item)
    elif isinstance(value, list):
        for item in value:
            yield from referenced(item)
