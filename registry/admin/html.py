"""Small HTML builders the registry admin pages share (escaped JSON blocks, links, history tables)."""

from __future__ import annotations

import json
from typing import Any

from django.urls import reverse
from django.utils.html import format_html, format_html_join

from registry.models import AliasEvent, ModelVersion


def json_block(value: Any) -> str:
    """A JSON value as a readable, escaped ``<pre>`` block ("-" when empty)."""
    if not value:
        return "-"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def side(version: ModelVersion | None) -> str:
    return f"v{version.version}" if version is not None else "base"


def change_link(obj: Any, text: str) -> str:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text)


def history_table(events: list[AliasEvent]) -> str:
    """Alias moves as a table: when, alias, kind, from, to, who, why."""
    if not events:
        return "No alias moves."
    rows = [
        (
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            change_link(e.alias, e.alias.alias),
            e.kind,
            side(e.from_version) if e.from_version_id else "-",
            side(e.to_version),
            e.actor.get_username() if e.actor_id else "-",
            e.reason or "",
        )
        for e in events
    ]
    return format_html(
        "<table><thead><tr><th>when</th><th>alias</th><th>kind</th><th>from</th><th>to</th><th>actor</th>"
        "<th>reason</th></tr></thead><tbody>{}</tbody></table>",
        format_html_join("", "<tr>" + "<td>{}</td>" * 7 + "</tr>", rows),
    )
