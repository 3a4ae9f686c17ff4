"""Terminal view of ``fidelity.json``: each metric with its CI and which way is good, then labels, then warnings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..intervals import format_interval


def _ci(value: Any) -> str:
    return format_interval(value) or "-"


def render_fidelity(doc: Mapping[str, Any], *, console: Console | None = None) -> None:
    """Print the metrics, label results and warnings of a fidelity document."""
    console = console or Console(highlight=False)
    metrics = doc.get("metrics", {}) if isinstance(doc.get("metrics"), Mapping) else {}
    directions = metrics.get("higher_is_better", {}) if isinstance(metrics.get("higher_is_better"), Mapping) else {}
    table = Table(title=f"Fidelity ({doc.get('features', {}).get('spec', '?')} features; "
                        f"{', '.join(f'{k} {v}' for k, v in doc.get('counts', {}).items())})", title_justify="left")
    table.add_column("metric")
    table.add_column("value [95 % CI]", justify="right")
    table.add_column("better")
    for name, value in metrics.items():
        if isinstance(value, Mapping) and "point" in value:
            better = {True: "higher", False: "lower"}.get(directions.get(name), "")
            table.add_row(name, _ci(value), better)
    console.print(table)
    for label, entry in (doc.get("labels") or {}).items():
        rows = Table(title=f"Label {label}", title_justify="left", show_header=False)
        rows.add_column(style="bold")
        rows.add_column(justify="right")
        _flatten(rows, "", entry)
        console.print(rows)
    for warning in metrics.get("warnings", []) or []:
        console.print(Text(f"warning: {warning}", style="yellow"))


def _flatten(table: Table, prefix: str, value: Any) -> None:
    if isinstance(value, Mapping) and "point" in value:
        table.add_row(prefix, _ci(value))
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(table, f"{prefix}.{key}" if prefix else str(key), inner)
    elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
        table.add_row(prefix, f"{value:.4g}" if isinstance(value, float) else str(value))
