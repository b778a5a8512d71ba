"""Charts as inline SVG: drawn in microseconds, no script, no image request, and the same markup in the web app
and in the self-contained HTML report. Labels go through `escape`, since they are users' strings."""

from __future__ import annotations

from html import escape
from typing import Any

from markupsafe import Markup

WIDTH, BAR, GAP, LABEL = 640, 16, 4, 200


def _num(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.3g}"


def bars(title: str, data: dict[str, float] | list[tuple[str, float]], top: int = 25) -> Markup:
    """Horizontal bars, largest first as given, at most TOP of them."""
    rows = list(data.items() if isinstance(data, dict) else data)[:top]
    if not rows:
        return Markup("")
    peak = max(v for _, v in rows) or 1
    h = 24 + len(rows) * (BAR + GAP)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {h}" width="{WIDTH}" height="{h}" role="img" '
             f'aria-label="{escape(title)}"><text x="0" y="14" class="title">{escape(title)}</text>']
    span = WIDTH - LABEL - 70
    for k, (name, v) in enumerate(rows):
        y = 24 + k * (BAR + GAP)
        w = max(1.0, span * v / peak)
        label = str(name) if len(str(name)) <= 30 else str(name)[:29] + "…"
        parts.append(f'<text x="{LABEL - 6}" y="{y + 12}" text-anchor="end">{escape(label)}</text>'
                     f'<rect x="{LABEL}" y="{y}" width="{w:.1f}" height="{BAR}"><title>{escape(str(name))}: '
                     f'{_num(v)}</title></rect><text x="{LABEL + w + 4:.1f}" y="{y + 12}">{_num(v)}</text>')
    return Markup("".join(parts) + "</svg>")


def histogram(title: str, counts: list[float], edges: list[float], xlabel: str = "") -> Markup:
    """Vertical bars over bins (len(edges) == len(counts) + 1), with the outer edges and the peak marked."""
    if not counts or not any(counts):
        return Markup("")
    w, h, top, bottom = 480, 180, 24, 30
    peak = max(counts)
    step = (w - 20) / len(counts)
    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             f'aria-label="{escape(title)}"><text x="0" y="14" class="title">{escape(title)}</text>']
    for k, c in enumerate(counts):
        bh = (h - top - bottom) * c / peak
        x = 10 + k * step
        parts.append(f'<rect x="{x:.1f}" y="{h - bottom - bh:.1f}" width="{max(step - 1, 1):.1f}" height="{bh:.1f}">'
                     f'<title>{_num(edges[k])} to {_num(edges[k + 1])}: {_num(c)}</title></rect>')
    parts.append(f'<text x="10" y="{h - 14}">{_num(edges[0])}</text>'
                 f'<text x="{w - 10}" y="{h - 14}" text-anchor="end">{_num(edges[-1])}</text>'
                 f'<text x="{w / 2}" y="{h - 2}" text-anchor="middle">{escape(xlabel)}</text>'
                 f'<text x="{w - 10}" y="{top + 10}" text-anchor="end">peak {_num(peak)}</text></svg>')
    return Markup("".join(parts))


def stats_charts(stats: dict[str, Any]) -> list[Markup]:
    """The charts of a slice's statistics (the ones `skd stats --plots` writes as PNG files)."""
    if not stats:
        return []
    out, c = [], stats.get("counts", {})
    for key in ("kind", "relation", "domain"):
        if c.get(key):
            out.append(bars(f"items per {key} (n={c['n']:,})", c[key]))
    ln = stats.get("lengths", {})
    if ln.get("n"):
        out.append(histogram(f"generated part, words (n={ln['n']:,})", ln["histogram"]["counts"],
                             ln["histogram"]["edges"], "words"))
    pc = stats.get("embeddings", {}).get("pairwise_cosine")
    if pc:
        out.append(histogram(f"pairwise cosine (sample n={pc['n']:,})", pc["histogram"],
                             [-1 + k * 0.1 for k in range(21)], "cosine"))
    for name, cs in stats.get("critic_scores", {}).items():
        out.append(histogram(f"critic {name} scores (n={cs['n']:,})", cs["histogram"],
                             [k / 10 for k in range(11)], "score"))
    return [x for x in out if x]
