"""SVG charts without a plotting library: panels with axes, lines, bands, bars, markers,
heatmaps and embedded images, written as text.

A run's report draws its figures with this module (:mod:`digitcnn.reporting.charts`) instead
of matplotlib, whose import and rasterising cost a script seconds per run. The charts are
vector graphics, sharp at any zoom, and every drawn element can carry a ``<title>``, which a
browser shows on hover, without JavaScript. Coordinates are rounded to 0.1 px and points
that fall on the same rounded pixel are dropped, so a curve of thousands of points stays
small.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PALETTE", "Figure", "Panel", "nice_ticks", "text_colour_on"]

# matplotlib's tab10, the colours the PNG figures used
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _title(tooltip: str | None) -> str:
    return f"<title>{_e(tooltip)}</title>" if tooltip else ""


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """At most about ``count`` round tick values (steps of 1, 2, 2.5 or 5 times a power of
    ten) inside [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _tick_label(value: float, step: float) -> str:
    """A tick's text with as many decimals as the step needs."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and round(step * 10**decimals) % 10 and step * 10**decimals % 1:
        decimals += 1  # 2.5, 0.25
    return f"{value:.{decimals}f}"


def text_colour_on(fraction: float) -> str:
    """White text on a dark cell (above 60% of the colour scale), black otherwise."""
    return "#ffffff" if fraction > 0.6 else "#000000"


def _blues(fraction: float) -> str:
    """A white-to-dark-blue scale (like matplotlib's Blues) at ``fraction`` in [0, 1]."""
    fraction = min(max(fraction, 0.0), 1.0)
    light, dark = (247, 251, 255), (8, 48, 107)
    rgb = (round(a + (b - a) * fraction) for a, b in zip(light, dark))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclass
class Panel:
    """One plotting area at (left, top), ``width`` x ``height`` px, mapping data ranges
    ``x_range`` and ``y_range`` onto it (y grows upwards unless ``y_down``). Drawing methods
    append SVG elements, clipped to the area."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    clip_id: str
    y_down: bool = False
    elements: list[str] = field(default_factory=list)
    legend_entries: list[tuple[str, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ coordinates
    def x(self, values) -> np.ndarray:
        low, high = self.x_range
        span = (high - low) or 1.0
        return self.left + (np.asarray(values, dtype=float) - low) / span * self.width

    def y(self, values) -> np.ndarray:
        low, high = self.y_range
        span = (high - low) or 1.0
        fraction = (np.asarray(values, dtype=float) - low) / span
        return self.top + (fraction if self.y_down else 1 - fraction) * self.height

    def _paths(self, xs, ys) -> list[str]:
        """SVG path data, one subpath per run of finite points.

        Points outside the panel are dropped unless a neighbour is inside (the clip path
        cuts the segment), and so is a point less than half a pixel from the last one kept:
        the micro-averaged ROC curve of 5,620 rows has tens of thousands of points, which
        draw the same as a few hundred.
        """
        px = np.round(self.x(xs), 1)
        py = np.round(self.y(ys), 1)
        finite = np.isfinite(px) & np.isfinite(py)
        inside = (
            (px >= self.left - 1)
            & (px <= self.left + self.width + 1)
            & (py >= self.top - 1)
            & (py <= self.top + self.height + 1)
        )
        near = inside.copy()
        near[1:] |= inside[:-1]
        near[:-1] |= inside[1:]
        paths: list[str] = []
        current: list[str] = []
        last: tuple[float, float] | None = None
        final = len(px) - 1
        for index, (fx, fy, ok, shown) in enumerate(
            zip(px.tolist(), py.tolist(), finite.tolist(), near.tolist())
        ):
            if not (ok and shown):
                if len(current) > 1:
                    paths.append("M" + "L".join(current))
                current, last = [], None
                continue
            moved = last is None or abs(fx - last[0]) >= 0.5 or abs(fy - last[1]) >= 0.5
            ends = index == final or not (finite[index + 1] and near[index + 1])
            if moved or (ends and (fx, fy) != last):
                current.append(f"{fx:g},{fy:g}")
                last = (fx, fy)
        if len(current) > 1:
            paths.append("M" + "L".join(current))
        elif len(current) == 1:  # a single point: a dot-length segment keeps it visible
            paths.append(f"M{current[0]}h0.1")
        return paths

    def _clipped(self, element: str) -> None:
        self.elements.append(f'<g clip-path="url(#{self.clip_id})">{element}</g>')

    # ------------------------------------------------------------------ drawing
    def line(
        self,
        xs,
        ys,
        colour: str,
        width: float = 1.5,
        dash: str | None = None,
        opacity: float = 1.0,
        label: str | None = None,
        tooltip: str | None = None,
        step: bool = False,
    ) -> None:
        """A polyline through (xs, ys); NaN breaks it. ``step``: steps after each point, as
        matplotlib's ``step(where="post")``. ``label`` goes into the legend."""
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if step and len(xs) > 1:
            xs = np.repeat(xs, 2)[1:]
            ys = np.repeat(ys, 2)[:-1]
        data = "".join(self._paths(xs, ys))
        if not data:
            return
        dashing = f' stroke-dasharray="{dash}"' if dash else ""
        fading = f' stroke-opacity="{opacity:g}"' if opacity < 1 else ""
        self._clipped(
            f'<path class="series" d="{data}" fill="none" stroke="{colour}" '
            f'stroke-width="{width:g}"{dashing}{fading} stroke-linejoin="round">'
            f"{_title(tooltip or label)}</path>"
        )
        if label:
            self.legend_entries.append(
                (label, f'stroke="{colour}" stroke-width="{width:g}"{dashing}')
            )

    def band(self, xs, low, high, colour: str, opacity: float = 0.18, label: str | None = None):
        """The area between ``low`` and ``high`` over ``xs`` (finite points only)."""
        xs, low, high = (np.asarray(a, dtype=float) for a in (xs, low, high))
        keep = np.isfinite(xs) & np.isfinite(low) & np.isfinite(high)
        if keep.sum() < 2:
            return
        px = np.round(self.x(xs[keep]), 1)
        top, bottom = np.round(self.y(high[keep]), 1), np.round(self.y(low[keep]), 1)
        points = [f"{a:g},{b:g}" for a, b in zip(px.tolist(), top.tolist())]
        points += [f"{a:g},{b:g}" for a, b in zip(px[::-1].tolist(), bottom[::-1].tolist())]
        self._clipped(
            f'<polygon class="series" points="{" ".join(points)}" fill="{colour}" '
            f'fill-opacity="{opacity:g}">{_title(label)}</polygon>'
        )
        if label:
            self.legend_entries.append((label, f'fill="{colour}" fill-opacity="{opacity:g}"'))

    def markers(
        self,
        xs,
        ys,
        colour: str,
        shape: str = "circle",
        size: float = 4.0,
        label: str | None = None,
        tooltips: Sequence[str] | None = None,
        opacity: float = 1.0,
    ) -> None:
        """One marker per finite point: ``circle``, ``down`` or ``up`` (triangles), ``cross``."""
        px, py = self.x(xs), self.y(ys)
        parts = []
        for index, (fx, fy) in enumerate(zip(px.tolist(), py.tolist())):
            if not (math.isfinite(fx) and math.isfinite(fy)):
                continue
            tip = _title(tooltips[index] if tooltips else label)
            parts.append(_marker(shape, fx, fy, size, colour, opacity, tip))
        if parts:
            self._clipped("".join(parts))
        if label:
            self.legend_entries.append((label, f"marker:{shape}:{colour}"))

    def bars(
        self,
        xs,
        heights,
        colour: str,
        width: float = 0.8,
        label: str | None = None,
        tooltips: Sequence[str] | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        """Vertical bars from the bottom of the y range to ``heights``, ``width`` in x units;
        ``texts`` written inside each bar's top."""
        bottom = self.y([self.y_range[0]])[0]
        parts = []
        for index, (x, h) in enumerate(zip(np.asarray(xs, float), np.asarray(heights, float))):
            if not math.isfinite(h):
                continue
            x0, x1 = self.x([x - width / 2, x + width / 2])
            top = self.y([h])[0]
            tip = _title(tooltips[index] if tooltips else label)
            parts.append(
                f'<rect class="mark" x="{x0:.1f}" y="{min(top, bottom):.1f}" '
                f'width="{x1 - x0:.1f}" height="{abs(bottom - top):.1f}" fill="{colour}" '
                f'fill-opacity="0.8">{tip}</rect>'
            )
            if texts:
                parts.append(
                    f'<text x="{(x0 + x1) / 2:.1f}" y="{top + 13:.1f}" text-anchor="middle" '
                    f'font-size="10" font-weight="bold" fill="#ffffff">{_e(texts[index])}</text>'
                )
        self._clipped("".join(parts))
        if label:
            self.legend_entries.append((label, f'fill="{colour}" fill-opacity="0.8"'))

    def hline(self, value: float, colour: str, dash: str | None = None, label: str | None = None):
        """A horizontal line across the panel at y = ``value``."""
        self.line(self.x_range, [value, value], colour, 1.0, dash, label=label)

    def heatmap(
        self,
        values: np.ndarray,
        texts: Sequence[str],
        vmax: float,
        tooltips: Sequence[str],
    ) -> None:
        """(R, C) cells, white to dark blue over [0, ``vmax``], each with its text and
        tooltip (both in row-major order); the panel's ranges must be (-0.5, C - 0.5) and
        (-0.5, R - 0.5) with ``y_down``."""
        parts = []
        for (row, column), text, tip in zip(np.ndindex(values.shape), texts, tooltips):
            fraction = float(values[row, column]) / vmax if vmax else 0.0
            x0, x1 = self.x([column - 0.5, column + 0.5])
            y0, y1 = self.y([row - 0.5, row + 0.5])
            parts.append(
                f'<g class="mark"><rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                f'height="{y1 - y0:.1f}" fill="{_blues(fraction)}"/>'
                f'<text x="{(x0 + x1) / 2:.1f}" y="{(y0 + y1) / 2 + 4:.1f}" '
                f'text-anchor="middle" font-size="10.5" fill="{text_colour_on(fraction)}">'
                f"{_e(text)}</text>{_title(tip)}</g>"
            )
        self.elements.append("".join(parts))

    def image(self, x: float, y: float, width: float, height: float, png: str, tooltip: str):
        """A base64 PNG at data (x, y) top-left, ``width`` x ``height`` px, pixels kept square
        and sharp."""
        px, py = self.x([x])[0], self.y([y])[0]
        self.elements.append(
            f'<image class="mark" x="{px:.1f}" y="{py:.1f}" width="{width:g}" '
            f'height="{height:g}" href="data:image/png;base64,{png}" '
            f'style="image-rendering:pixelated">{_title(tooltip)}</image>'
        )

    def text(self, x: float, y: float, text: str, size: float = 10, anchor: str = "middle"):
        """Text at data (x, y)."""
        px, py = self.x([x])[0], self.y([y])[0]
        self.elements.append(
            f'<text x="{px:.1f}" y="{py:.1f}" text-anchor="{anchor}" font-size="{size:g}">'
            f"{_e(text)}</text>"
        )


def _marker(shape: str, x: float, y: float, size: float, colour: str, opacity: float, tip: str):
    fade = f' fill-opacity="{opacity:g}"' if opacity < 1 else ""
    if shape == "circle":
        return (
            f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="{size:g}" fill="{colour}"'
            f"{fade}>{tip}</circle>"
        )
    if shape == "cross":
        s = size
        return (
            f'<path class="mark" d="M{x - s:.1f},{y - s:.1f}L{x + s:.1f},{y + s:.1f}'
            f'M{x - s:.1f},{y + s:.1f}L{x + s:.1f},{y - s:.1f}" stroke="{colour}" '
            f'stroke-width="2">{tip}</path>'
        )
    sign = 1 if shape == "down" else -1
    points = (
        f"{x - size:.1f},{y - sign * size:.1f} {x + size:.1f},{y - sign * size:.1f} "
        f"{x:.1f},{y + sign * size:.1f}"
    )
    return f'<polygon class="mark" points="{points}" fill="{colour}"{fade}>{tip}</polygon>'


@dataclass
class Figure:
    """An SVG document ``width`` x ``height`` px holding panels, a title and free text."""

    width: float
    height: float
    title: str = ""
    name: str = "chart"
    panels: list[Panel] = field(default_factory=list)
    decorations: list[str] = field(default_factory=list)
    _axes: list[str] = field(default_factory=list)

    def panel(
        self,
        left: float,
        top: float,
        width: float,
        height: float,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        title: str = "",
        xlabel: str = "",
        ylabel: str = "",
        x_ticks: Sequence[float] | None = None,
        y_ticks: Sequence[float] | None = None,
        x_labels: Sequence[str] | None = None,
        y_labels: Sequence[str] | None = None,
        y_format: Callable[[float], str] | None = None,
        grid: bool = True,
        y_down: bool = False,
        frame: bool = True,
    ) -> Panel:
        """A panel with its frame, ticks (round values unless given), grid and labels."""
        panel = Panel(
            left,
            top,
            width,
            height,
            x_range,
            y_range,
            f"{self.name}-clip{len(self.panels)}",
            y_down,
        )
        self.panels.append(panel)
        xt = list(x_ticks) if x_ticks is not None else nice_ticks(*x_range)
        yt = list(y_ticks) if y_ticks is not None else nice_ticks(*y_range)
        x_step = (xt[1] - xt[0]) if len(xt) > 1 else 1.0
        y_step = (yt[1] - yt[0]) if len(yt) > 1 else 1.0
        parts = (
            [
                f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{height:.1f}" '
                'fill="#ffffff" stroke="#555555" stroke-width="0.8"/>'
            ]
            if frame
            else []
        )
        bottom = top + height
        for index, value in enumerate(xt):
            px = float(panel.x([value])[0])
            if grid:
                parts.append(
                    f'<line x1="{px:.1f}" y1="{top:.1f}" x2="{px:.1f}" y2="{bottom:.1f}" '
                    'stroke="#000000" stroke-opacity="0.1"/>'
                )
            label = x_labels[index] if x_labels is not None else _tick_label(value, x_step)
            for line_no, part in enumerate(str(label).split("\n")):
                parts.append(
                    f'<text x="{px:.1f}" y="{bottom + 14 + 12 * line_no:.1f}" '
                    f'text-anchor="middle" font-size="10">{_e(part)}</text>'
                )
        for index, value in enumerate(yt):
            py = float(panel.y([value])[0])
            if grid:
                parts.append(
                    f'<line x1="{left:.1f}" y1="{py:.1f}" x2="{left + width:.1f}" y2="{py:.1f}" '
                    'stroke="#000000" stroke-opacity="0.1"/>'
                )
            if y_labels is not None:
                label = y_labels[index]
            elif y_format is not None:
                label = y_format(value)
            else:
                label = _tick_label(value, y_step)
            parts.append(
                f'<text x="{left - 5:.1f}" y="{py + 3.5:.1f}" text-anchor="end" '
                f'font-size="10">{_e(label)}</text>'
            )
        if title:
            parts.append(
                f'<text class="panel-title" x="{left + width / 2:.1f}" y="{top - 8:.1f}" '
                f'text-anchor="middle" font-size="12.5">{_e(title)}</text>'
            )
        if xlabel:
            lines = 1 + max((str(s).count("\n") for s in (x_labels or [])), default=0)
            parts.append(
                f'<text x="{left + width / 2:.1f}" y="{bottom + 18 + 12 * lines:.1f}" '
                f'text-anchor="middle" font-size="11">{_e(xlabel)}</text>'
            )
        if ylabel:
            cx, cy = left - 44, top + height / 2
            parts.append(
                f'<text x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle" font-size="11" '
                f'transform="rotate(-90 {cx:.1f} {cy:.1f})">{_e(ylabel)}</text>'
            )
        self._axes.append("".join(parts))
        return panel

    def legend(self, panel: Panel, corner: str = "upper right", columns: int = 1) -> None:
        """The panel's labelled series in a box at ``corner`` (``upper``/``lower`` +
        ``left``/``right``) inside it."""
        entries = panel.legend_entries
        if not entries:
            return
        rows = -(-len(entries) // columns)
        widths = [
            max(len(label) for label in [e[0] for e in entries[c * rows : (c + 1) * rows]] or [""])
            for c in range(columns)
        ]
        column_px = [34 + 5.6 * w for w in widths]
        box_w, box_h = sum(column_px) + 8, 15 * rows + 8
        x0 = panel.left + 8 if "left" in corner else panel.left + panel.width - box_w - 8
        y0 = panel.top + 8 if "upper" in corner else panel.top + panel.height - box_h - 8
        parts = [
            f'<g class="legend"><rect x="{x0:.1f}" y="{y0:.1f}" width="{box_w:.1f}" '
            f'height="{box_h:.1f}" fill="#ffffff" fill-opacity="0.85" stroke="#cccccc"/>'
        ]
        for index, (label, style) in enumerate(entries):
            column, row = divmod(index, rows)
            ex = x0 + 6 + sum(column_px[:column])
            ey = y0 + 12 + 15 * row
            if style.startswith("marker:"):
                _, shape, colour = style.split(":")
                parts.append(_marker(shape, ex + 11, ey - 3.5, 3.5, colour, 1.0, ""))
            elif style.startswith("fill"):
                parts.append(f'<rect x="{ex:.1f}" y="{ey - 8:.1f}" width="22" height="9" {style}/>')
            else:
                parts.append(f'<path d="M{ex:.1f},{ey - 3.5:.1f}h22" fill="none" {style}/>')
            parts.append(f'<text x="{ex + 27:.1f}" y="{ey:.1f}" font-size="10">{_e(label)}</text>')
        parts.append("</g>")
        self.decorations.append("".join(parts))

    def text(self, x: float, y: float, text: str, size: float = 12, anchor: str = "middle"):
        """Text at pixel (x, y) of the figure; newlines start new lines."""
        for line_no, part in enumerate(text.split("\n")):
            self.decorations.append(
                f'<text x="{x:.1f}" y="{y + line_no * (size + 3):.1f}" text-anchor="{anchor}" '
                f'font-size="{size:g}">{_e(part)}</text>'
            )

    def to_svg(self) -> str:
        """The whole document: an ``.svg`` file, which an HTML page can also inline as it is
        (its XML namespace is a name, not a resource that is fetched)."""
        clips = "".join(
            f'<clipPath id="{p.clip_id}"><rect x="{p.left:.1f}" y="{p.top:.1f}" '
            f'width="{p.width:.1f}" height="{p.height:.1f}"/></clipPath>'
            for p in self.panels
        )
        heading = (
            f'<text class="chart-title" x="{self.width / 2:.1f}" y="20" text-anchor="middle" '
            f'font-size="14">{_e(self.title)}</text>'
            if self.title
            else ""
        )
        body = "".join(self._axes) + "".join("".join(p.elements) for p in self.panels)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{_e(self.name)}" '
            f'width="{self.width:g}" height="{self.height:g}" '
            f'viewBox="0 0 {self.width:g} {self.height:g}" {FONT} role="img">'
            f"<title>{_e(self.title or self.name)}</title><defs>{clips}</defs>"
            f'<rect width="100%" height="100%" fill="#ffffff"/>{heading}{body}'
            + "".join(self.decorations)
            + "</svg>\n"
        )
