"""PNG charts of a slice's statistics (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def bar(path: Path, title: str, data: dict[str, int], top: int = 30) -> Path:
    import matplotlib.pyplot as plt

    items = list(data.items())[:top]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(items))))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)
    return path


def histogram(path: Path, title: str, counts: list[int], edges: list[float], xlabel: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.stairs(counts, edges, fill=True)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    _save(fig, path)
    plt.close(fig)
    return path


def write_plots(stats: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per distribution: relations, kinds, tail lengths, pairwise cosine, critic scores."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    c = stats["counts"]
    for key in ("kind", "relation", "domain"):
        if c[key]:
            files.append(bar(out / f"{key}.png", f"items per {key} (n={c['n']:,})", c[key]))
    ln = stats["lengths"]
    if ln.get("n"):
        files.append(histogram(out / "lengths.png", f"generated part, words (n={ln['n']:,})",
                               ln["histogram"]["counts"], ln["histogram"]["edges"], "words"))
    pc = stats["embeddings"].get("pairwise_cosine")
    if pc:
        files.append(histogram(out / "pairwise_cosine.png", f"pairwise cosine (sample n={pc['n']:,})",
                               pc["histogram"], np.linspace(-1, 1, 21).tolist(), "cosine"))
    for name, cs in stats["critic_scores"].items():
        files.append(histogram(out / f"critic_{name}.png", f"critic {name} scores (n={cs['n']:,})",
                               cs["histogram"], np.linspace(0, 1, 11).tolist(), "score"))
    return files


def lines(path: Path, title: str, x: list[float], series: dict[str, list[float]], xlabel: str, ylabel: str) -> Path:
    """One line per series over a shared x axis (a student's domain mixture over its steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    plt.close(fig)
    return path
