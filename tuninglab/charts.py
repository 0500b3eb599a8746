"""Line charts as standalone SVG documents, in pure Python (no plotting library, no browser).

The web pages draw a job's loss and learning-rate curves; the same charts are downloadable
(``curves.svg``), so they must be complete documents that render anywhere. Every text that
may come from user data (titles, series names) is XML-escaped here, the one place that
writes SVG markup. Points whose coordinates are not finite numbers (NaN and infinities
arrive as null from the engine) are skipped, never drawn as zero.

The page's script (``webui/static/webui/charts.js``) redraws the same layout in the browser
from the live points: keep the geometry constants below and the ones there in step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

SVG_NS = "http://www.w3.org/2000/svg"
# Series colours, in order (colour-blind safe: Okabe-Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
# Plot area margins (px): room for the title, tick labels and axis labels.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 32, 44
TICKS = 5
NO_DATA = "no data yet"

Point = tuple[float, float]


def _finite_points(points: Iterable[Sequence[object]]) -> list[Point]:
    """The points whose two coordinates are finite numbers, as floats (bools are not numbers)."""
    kept: list[Point] = []
    for point in points:
        if len(point) < 2:
            continue
        x, y = point[0], point[1]
        if (
            isinstance(x, bool)
            or isinstance(y, bool)
            or not isinstance(x, int | float)
            or not isinstance(y, int | float)
        ):
            continue
        if math.isfinite(x) and math.isfinite(y):
            kept.append((float(x), float(y)))
    return kept


def nice_ticks(low: float, high: float, count: int = TICKS) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 x 10^k) covering ``low..high``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high < low:
        low, high = high, low
    if high == low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    # Rounding to the step's precision keeps 0.1 + 0.2 from printing as 0.30000000000000004.
    digits = max(0, -math.floor(math.log10(step)) + 1)
    while value <= high + step * 1e-9:
        ticks.append(round(value, digits))
        value += step
    if ticks and ticks[-1] < high:
        ticks.append(round(value, digits))
    return ticks


def format_tick(value: float) -> str:
    """A short label: plain for ordinary magnitudes, exponent form for tiny or huge ones (lr 2e-4)."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def _domain(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="{SVG_NS}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="11" role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" font-weight="bold">'
        f"{escape(title)}</text>",
    ]


def line_chart_svg(
    series: Mapping[str, Sequence[Sequence[object]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 280,
) -> str:
    """A standalone SVG line chart: axes with ticks, one ``<polyline>`` per non-empty series, a legend.

    Args:
        series: name -> ``[(x, y), ...]``; non-finite or non-numeric points are skipped.
        title, x_label, y_label: texts (escaped).
        width, height: the document's size in px.

    Returns:
        The SVG document as text. With no drawable point at all it is a frame that says
        "no data yet". Each polyline carries ``data-series`` (its name) and ``data-points``.
    """
    clean = {str(name): _finite_points(points) for name, points in series.items()}
    parts = _open(width, height, title)
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    all_points = [p for points in clean.values() for p in points]
    if not all_points:
        parts.append(
            f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#cccccc"/>'
        )
        parts.append(
            f'<text x="{(left + right) / 2:.1f}" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
            f'fill="#666666" class="no-data">{NO_DATA}</text>'
        )
        parts.append("</svg>")
        return "\n".join(parts)

    x_ticks = nice_ticks(*_domain([p[0] for p in all_points]))
    y_ticks = nice_ticks(*_domain([p[1] for p in all_points]))
    x_min, x_max = x_ticks[0], x_ticks[-1]
    y_min, y_max = y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x_min) / (x_max - x_min) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y_min) / (y_max - y_min) * (bottom - top)

    parts.append('<g class="grid" stroke="#eeeeee">')
    parts += [f'<line x1="{left}" x2="{right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>' for t in y_ticks]
    parts.append("</g>")
    parts.append(
        f'<g class="axes" stroke="#333333"><line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/></g>'
    )
    parts.append('<g class="x-ticks" text-anchor="middle">')
    for t in x_ticks:
        parts.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#333333"/>'
            f'<text x="{sx(t):.1f}" y="{bottom + 16}">{escape(format_tick(t))}</text>'
        )
    parts.append("</g>")
    parts.append('<g class="y-ticks" text-anchor="end">')
    for t in y_ticks:
        parts.append(
            f'<line x1="{left - 4}" x2="{left}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#333333"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}">{escape(format_tick(t))}</text>'
        )
    parts.append("</g>")
    parts.append(
        f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle" class="x-label">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="14" y="{(top + bottom) / 2:.1f}" text-anchor="middle" class="y-label" '
        f'transform="rotate(-90 14 {(top + bottom) / 2:.1f})">{escape(y_label)}</text>'
    )

    legend_y = top + 4
    for index, (name, points) in enumerate(clean.items()):
        color = PALETTE[index % len(PALETTE)]
        if points:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" data-series={quoteattr(name)} '
                f'data-points="{len(points)}" points="{coords}"/>'
            )
            if len(points) == 1:  # a one-point polyline draws nothing: mark the point
                x, y = points[0]
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>')
        parts.append(
            f'<g class="legend"><line x1="{right - 110}" x2="{right - 94}" y1="{legend_y}" y2="{legend_y}" '
            f'stroke="{color}" stroke-width="2"/><text x="{right - 90}" y="{legend_y + 4}">{escape(name)}</text></g>'
        )
        legend_y += 14
    parts.append("</svg>")
    return "\n".join(parts)


def stacked_svg(documents: Sequence[str], *, width: int = 640, heights: Sequence[int]) -> str:
    """Several charts from ``line_chart_svg`` one above the other in one standalone SVG document.

    Nested ``<svg>`` elements keep each chart's own coordinate system; ``heights`` are the
    heights the charts were drawn with.
    """
    total = sum(heights)
    parts = [f'<svg xmlns="{SVG_NS}" width="{width}" height="{total}" viewBox="0 0 {width} {total}">']
    offset = 0
    for document, height in zip(documents, heights, strict=True):
        # Each document opens with '<svg xmlns=... width=...': place it by inserting x/y.
        parts.append(document.replace("<svg ", f'<svg x="0" y="{offset}" ', 1))
        offset += height
    parts.append("</svg>")
    return "\n".join(parts)
