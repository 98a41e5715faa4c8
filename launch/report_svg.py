"""Inline SVG charts for the report: a page that opens anywhere (no scripts, fonts or
network), and whose elements carry their data (data-* attributes, <title> tooltips) so a
reader can hover a point and a test can find it."""

import html
import math

WIDTH, HEIGHT = 380, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 42, 44  # plot margins, room for ticks and labels
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float) -> str:
    """A short label: 12.35, 0.0123, 4.2e+05."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}".rstrip("0").rstrip(".")


def nice_ticks(low: float, high: float, *, count: int = 5) -> list[float]:
    """Round tick values spanning [low, high] (1, 2 or 5 times a power of ten apart)."""
    if high <= low:
        low, high = low - 1, high + 1
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    fraction = raw / power  # rounded to 1, 2, 5 or 10: about `count` ticks
    step = power * next(m for limit, m in ((1.5, 1), (3, 2), (7, 5), (99, 10))
                        if fraction < limit)
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _frame(*, kind: str, key: str, value: str, title: str, body: list[str]) -> str:
    return (f'<svg class="{kind}" data-{key}="{esc(value)}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
            f'<text class="chart-title" x="12" y="18">{esc(title)}</text>'
            + "".join(body) + "</svg>")


def _axes(*, y_ticks: list[float], y_at, x_label: str, y_label: str) -> list[str]:
    """Left and bottom axes, horizontal grid lines with values, and the axis labels."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = []
    for tick in y_ticks:
        y = y_at(tick)
        parts.append(f'<line class="gridline" x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{esc(fmt(tick))}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>'
                 f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
                 f'<text class="axis-label" x="{(LEFT + right) / 2:.1f}" y="{HEIGHT - 6}" '
                 f'text-anchor="middle">{esc(x_label)}</text>'
                 f'<text class="axis-label" transform="translate(14 {(TOP + bottom) / 2:.1f}) '
                 f'rotate(-90)" text-anchor="middle">{esc(y_label)}</text>')
    return parts


def _scale(low: float, high: float, out_low: float, out_high: float):
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def _legend(names: list[str]) -> list[str]:
    parts, x = [], WIDTH - RIGHT
    for index, name in reversed(list(enumerate(names))):
        x -= 14 + 7 * len(name)
        parts.append(f'<g class="legend-entry"><rect x="{x}" y="24" width="10" height="10" '
                     f'fill="{COLORS[index % len(COLORS)]}"/><text class="legend" '
                     f'x="{x + 13}" y="33">{esc(name)}</text></g>')
    return parts


def line_chart(*, metric: str, title: str, series: dict[str, list[tuple[float, float]]],
               y_label: str, x_label: str = "step") -> str:
    """One <svg class="curve" data-metric=...>: a polyline and a point per (x, y) for
    each named series, on shared axes. A non-finite value (a diverged loss) is left out:
    it has no place on an axis."""
    series = {name: [(x, y) for x, y in values if math.isfinite(y)]
              for name, values in series.items()}
    points = [p for values in series.values() for p in values]
    if not points:
        return _frame(kind="curve", key="metric", value=metric, title=title,
                      body=['<text class="empty" x="50%" y="50%" text-anchor="middle">'
                            'no measurements</text>'])
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_ticks = nice_ticks(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1)
    y_ticks = nice_ticks(min(ys), max(ys))
    x_at = _scale(x_ticks[0], x_ticks[-1], LEFT, WIDTH - RIGHT)
    y_at = _scale(y_ticks[0], y_ticks[-1], HEIGHT - BOTTOM, TOP)
    body = _axes(y_ticks=y_ticks, y_at=y_at, x_label=x_label, y_label=y_label)
    body += [f'<text class="tick" x="{x_at(t):.1f}" y="{HEIGHT - BOTTOM + 15}" '
             f'text-anchor="middle">{esc(fmt(t))}</text>' for t in x_ticks]
    for index, (name, values) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        values = sorted(values)
        coords = " ".join(f"{x_at(x):.1f},{y_at(y):.1f}" for x, y in values)
        body.append(f'<polyline class="series" data-series="{esc(name)}" fill="none" '
                    f'stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        radius = 2.5 if len(values) <= 60 else 1.5
        body += [f'<circle class="point" data-series="{esc(name)}" data-step="{esc(fmt(x))}" '
                 f'data-value="{y!r}" cx="{x_at(x):.1f}" cy="{y_at(y):.1f}" r="{radius}" '
                 f'fill="{color}"><title>{esc(name)}, {esc(x_label)} {esc(fmt(x))}: '
                 f'{esc(fmt(y))}</title></circle>' for x, y in values]
    if len(series) > 1 or next(iter(series)) != metric:
        body += _legend(list(series))
    return _frame(kind="curve", key="metric", value=metric, title=title, body=body)


def bar_chart(*, name: str, title: str, labels: list[str], series: dict[str, list[float]],
              y_label: str, x_label: str, y_max: float | None = None) -> str:
    """One <svg class="bars" data-analysis=...>: grouped bars, a group per label and a
    bar (<rect class="bar">) per series."""
    values = [v for column in series.values() for v in column]
    top = max([y_max or 0.0] + values) or 1.0  # y_max, unless a value is above it
    y_ticks = nice_ticks(0.0, top)
    y_at = _scale(0.0, y_ticks[-1], HEIGHT - BOTTOM, TOP)
    body = _axes(y_ticks=y_ticks, y_at=y_at, x_label=x_label, y_label=y_label)
    group = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    width = group * 0.8 / max(len(series), 1)
    for g, label in enumerate(labels):
        x0 = LEFT + g * group + group * 0.1
        body.append(f'<text class="tick" x="{LEFT + (g + 0.5) * group:.1f}" '
                    f'y="{HEIGHT - BOTTOM + 15}" text-anchor="middle">{esc(label)}</text>')
        for s, (series_name, column) in enumerate(series.items()):
            value = column[g]
            y = y_at(value)
            body.append(f'<rect class="bar" data-series="{esc(series_name)}" '
                        f'data-label="{esc(label)}" data-value="{value!r}" '
                        f'x="{x0 + s * width:.1f}" y="{y:.1f}" width="{width * 0.92:.1f}" '
                        f'height="{HEIGHT - BOTTOM - y:.1f}" fill="{COLORS[s % len(COLORS)]}">'
                        f'<title>{esc(series_name)}, {esc(label)}: {esc(fmt(value))}</title>'
                        '</rect>')
    if len(series) > 1:
        body += _legend(list(series))
    return _frame(kind="bars", key="analysis", value=name, title=title, body=body)
