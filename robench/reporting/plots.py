"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed) and saved
as PNG without a timestamp or version, so the same data gives the same bytes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    from ..files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _colors(n: int):
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    dark = colormaps["tab20"]  # the saturated half of tab20 first, then its light half
    return [dark((2 * i) % 20 + (2 * i) // 20) for i in range(n)]


def eps_curves(path: Path, series: list[dict], title: str, norm: str, ylabel: str) -> Path:
    """Robust accuracy against eps: one line per series ({label, eps: [...], acc: [...], low, high, ref}),
    eps 0 being clean accuracy; the reference (ReLU) is drawn black and dashed; intervals as light bands."""
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    colors = iter(_colors(sum(not s.get("ref") for s in series)))
    for s in series:
        color = "black" if s.get("ref") else next(colors)
        style = dict(color="black", linestyle="--", linewidth=2.0) if s.get("ref") else dict(color=color, linewidth=1.5)
        ax.plot(s["eps"], s["acc"], marker="o", markersize=3.5, label=s["label"], **style)
        ax.fill_between(s["eps"], s["low"], s["high"], color=style["color"], alpha=0.08, linewidth=0)
    ax.set_xlabel(f"{norm} eps (0 = clean)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2 if len(series) > 6 else 1, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def activation_shapes(path: Path, panels: list[dict], title: str, lim: float = 4.0) -> Path:
    """One panel per model ({title, curves: [(label, fn)]}): each of its activation instances drawn over
    [-lim, lim] from the model's own learned parameters, ReLU dashed for reference."""
    x = np.linspace(-lim, lim, 401)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(3.0 * cols, 2.6 * rows + 0.4)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.plot(x, np.maximum(x, 0), color="black", linestyle="--", linewidth=1.0, label="ReLU")
        curves = panel["curves"]
        layers = max((c[2].get("color_index", 0) for c in curves if len(c) > 2), default=len(curves) - 1) + 1
        colors = _colors(max(layers, len(curves) if all(len(c) == 2 for c in curves) else layers))
        for i, curve in enumerate(curves):
            label, fn = curve[0], curve[1]
            style = curve[2] if len(curve) > 2 else {}
            color = colors[style.get("color_index", i)]
            ax.plot(x, fn(x), color=color, linewidth=1.3, label=label, linestyle=style.get("linestyle", "-"))
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if panel.get("note"):
            ax.text(0.5, 0.5, panel["note"], transform=ax.transAxes, ha="center", fontsize=8)
        if sum(c[0] is not None for c in curves) > 1 and len(curves) <= 16:
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def heatmap(path: Path, values: list[list[float]], rows: list[str], cols: list[str], title: str,
            label: str) -> Path:
    """A matrix of percentages (NaN where not measured) with each cell written in it; rows are sources,
    columns targets."""
    data = np.array(values, dtype=float)
    fig = _figure(1.6 + 0.9 * len(cols), 1.4 + 0.45 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] < 55 else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
