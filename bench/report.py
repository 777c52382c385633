"""gan-bench output: a table on the terminal, JSON and CSV for machines, a PNG plot."""

from __future__ import annotations

import csv
import json
import math
import pathlib
from collections.abc import Sequence

from ganserve.bench.load import Point

COLUMNS = [
    ("label", "series", 34),
    ("load", "load", 6),
    ("requests_per_s", "req/s", 8),
    ("images_per_s", "img/s", 8),
    ("p50_ms", "p50 ms", 7),
    ("p90_ms", "p90", 7),
    ("p95_ms", "p95", 7),
    ("p99_ms", "p99", 7),
    ("max_ms", "max", 7),
    ("errors", "errors", 6),
    ("server_mean_batch", "batch", 6),
    ("server_mean_queue_ms", "queue ms", 8),
    ("client_cpu", "cli CPU", 7),
    ("send_lag_p99_ms", "lag p99", 7),  # fixed rate: the client's own lateness
    ("stable", "stable", 6),
]


def table(points: Sequence[Point]) -> str:
    """A fixed-width table, one row per point; the series column fits the longest label."""
    widths = [w for _, _, w in COLUMNS]
    widths[0] = max(widths[0], *(len(p.label) for p in points)) if points else widths[0]
    lines = [
        "  ".join(
            f"{title:>{w}}" if i else f"{title:<{w}}"
            for i, ((_, title, _), w) in enumerate(zip(COLUMNS, widths, strict=True))
        )
    ]
    for point in points:
        row = point.row()
        cells = []
        for i, ((key, _, _), w) in enumerate(zip(COLUMNS, widths, strict=True)):
            value = row.get(key, "")
            text = (
                f"{value:.2f}"
                if isinstance(value, float) and key.endswith("_ms")
                else f"{value:.0f}"
                if isinstance(value, float) and key in ("requests_per_s", "images_per_s")
                else (f"{value:.0f}" if value >= 10 else f"{value:g}")  # a rate may be 0.5/s
                if key == "load"
                else f"{value:.1f}"
                if isinstance(value, float) and key == "server_mean_batch"
                else f"{value:.2f}"  # cores, always to the hundredth: 0.40, not 0.4
                if isinstance(value, float) and key == "client_cpu"
                else ("yes" if value else "NO")
                if key == "stable"
                else str(value)
            )
            cells.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
        lines.append("  ".join(cells))
    for point in points:  # what failed, once per status: a count alone says nothing to fix
        for code, count in sorted(point.errors.items()):
            detail = point.error_details.get(code, "")
            lines.append(
                f"{point.label}: {count} {code}" + (f" (first: {detail})" if detail else "")
            )
        lines += [f"{point.label}: {note}" for note in point.notes]
    return "\n".join(lines)


def write_json(points: Sequence[Point], path: pathlib.Path, extra: dict | None = None) -> None:
    """The points (`Point.record`: errors as an object by status code), and ``extra``."""
    dump_json({"points": [p.record() for p in points], **(extra or {})}, path, sort_keys=True)


def dump_json(value: object, path: pathlib.Path, *, sort_keys: bool = False) -> None:
    """Strict JSON (what `json.loads` elsewhere accepts): a figure not measured is null."""
    text = json.dumps(_no_nan(value), indent=2, sort_keys=sort_keys, allow_nan=False)
    path.write_text(text + "\n")


def _no_nan(value: object) -> object:
    """JSON has no NaN: a figure that could not be measured (no OK call) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def write_csv(points: Sequence[Point], path: pathlib.Path) -> None:
    # As in the JSON, a figure that could not be measured is empty, not "nan".
    rows = [{k: "" if v is None else v for k, v in _no_nan(p.row()).items()} for p in points]
    fields = sorted({k for row in rows for k in row}, key=lambda k: (k != "label", k))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot(points: Sequence[Point], path: pathlib.Path, title: str) -> None:
    """p50 and p99 latency against images/s: one line per concurrency sweep (points of one
    label prefix before ' c='; a sweep of one point is a marker), one marker pair per
    fixed-rate point. Calls that return no images
    (the bare gRPC round trip) have no place on this axis and are left to the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Point]] = {}
    for point in points:
        if point.mode == "concurrency" and point.images_per_s > 0:
            series.setdefault(point.label.split(" c=")[0], []).append(point)
    fig, ax = plt.subplots(figsize=(8, 6.5), dpi=110)
    for name, pts in series.items():
        pts = sorted(pts, key=lambda p: p.load)
        xs = [p.images_per_s for p in pts]
        (line,) = ax.plot(xs, [p.latency_ms["p99"] for p in pts], marker="o", label=f"{name} p99")
        ax.plot(
            xs,
            [p.latency_ms["p50"] for p in pts],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{name} p50",
        )
        for p in pts:
            ax.annotate(
                f"c={p.load:g}",
                (p.images_per_s, p.latency_ms["p99"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    for p in points:
        if p.mode == "rate" and p.images_per_s > 0:
            ax.plot(
                [p.images_per_s, p.images_per_s],
                [p.latency_ms["p50"], p.latency_ms["p99"]],
                marker="x",
                linestyle=":",
                label=f"{p.label} (p50, p99)",
            )
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:  # nothing to plot (no call returned images): an empty chart, no warning
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    else:
        ax.text(0.5, 0.5, "no call returned images", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
