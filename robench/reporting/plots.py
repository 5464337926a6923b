"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed) and saved
as PNG without a timestamp or version, so the same data gives the same bytes."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..config import CURVE_POINTS, SHAPE_RANGE

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


def _as_written(draw):
    """Every text of the figure ``draw`` makes is drawn as written: a name with ``$`` in it is never read as
    mathtext (which would fail on a stranger's malformed formula or typeset what it did not say)."""

    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapped


def _colors(n: int):
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    dark = colormaps["tab20"]  # the saturated half of tab20 first, then its light half
    return [dark((2 * i) % 20 + (2 * i) // 20) for i in range(n)]


@_as_written
def eps_curves(path: Path, series: list[dict], title: str, norm: str, ylabel: str) -> Path:
    """Robust accuracy against eps as small multiples: one panel per activation ({label, activation, eps: [...],
    acc: [...], low, high, ref}), each with the reference (ReLU) series drawn black and dashed beneath it, so
    every activation is read against ReLU alone; eps 0 is clean accuracy; intervals as light bands. With no
    reference series, one panel per activation without one."""
    refs = [s for s in series if s.get("ref")]
    by_act: dict[str, list[dict]] = {}
    for s in series:
        if not s.get("ref"):
            by_act.setdefault(s.get("activation", s["label"]), []).append(s)
    panels = list(by_act.items()) or [("relu", [])]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(3.1 * cols, 2.5 * rows + 0.5)
    axes = []
    for k, (act, own) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1, sharey=axes[0] if axes else None)
        axes.append(ax)
        for j, s in enumerate(refs):
            ax.plot(
                s["eps"],
                s["acc"],
                color="black",
                linestyle="--",
                linewidth=1.2,
                marker="o",
                markersize=2.5,
                label="ReLU" if j == 0 else None,
                alpha=0.9 if j == 0 else 0.55,
            )
            ax.fill_between(s["eps"], s["low"], s["high"], color="black", alpha=0.06, linewidth=0)
        colors = _colors(max(len(own), 1))
        for j, s in enumerate(own):
            ax.plot(
                s["eps"],
                s["acc"],
                color=colors[j],
                linewidth=1.5,
                marker="o",
                markersize=2.5,
                label=s["label"] if len(own) > 1 else act,
            )
            ax.fill_between(s["eps"], s["low"], s["high"], color=colors[j], alpha=0.12, linewidth=0)
        ax.set_title(act, fontsize=9)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel(ylabel, fontsize=7)
        if k >= len(panels) - cols:
            ax.set_xlabel(f"{norm} eps (0 = clean)", fontsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


@_as_written
def activation_shapes(path: Path, panels: list[dict], title: str, lim: float = SHAPE_RANGE) -> Path:
    """One panel per model ({title, curves: [(label, fn or values, style)]}): each of its activation
    instances drawn over [-lim, lim] at CURVE_POINTS points (recorded values are on that grid: nn.shapes.curve_x),
    ReLU dashed for reference."""
    x = np.linspace(-lim, lim, CURVE_POINTS)
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
            ys = fn(x) if callable(fn) else np.asarray(fn, dtype=float)  # recorded: on the same grid as x
            ax.plot(x, ys, color=color, linewidth=1.3, label=label, linestyle=style.get("linestyle", "-"))
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


@_as_written
def heatmap(path: Path, values: list[list[float]], rows: list[str], cols: list[str], title: str, label: str) -> Path:
    """A matrix of percentages (NaN where not measured) with each cell written in it; rows are sources,
    columns targets. The colour scale spans the data (a group between 68 and 81% is not one shade)."""
    data = np.array(values, dtype=float)
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if hi - lo < 1.0:
        lo, hi = lo - 0.5, hi + 0.5
    fig = _figure(1.6 + 0.9 * len(cols), 1.4 + 0.45 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("target (the model attacked)")
    ax.set_ylabel("source (crafted on)")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(
                    j,
                    i,
                    f"{data[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if data[i, j] < (lo + hi) / 2 else "black",
                )
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@_as_written
def forest(path: Path, panels: list[dict], title: str) -> Path:
    """A forest plot: one panel per metric ({title, rows: [(label, change, low, high)]}), each row's change
    against the reference as a dot with its 95% interval as a bar (an unbounded end drawn to the panel's
    edge with an arrow), the zero line drawn, so the answer shows before a number is read."""
    labels = list(dict.fromkeys(label for p in panels for label, *_ in p["rows"]))
    fig = _figure(2.2 + 2.6 * len(panels), 0.9 + 0.32 * len(labels))
    finite = [v for p in panels for _, d, lo, hi in p["rows"] for v in (d, lo, hi) if np.isfinite(v)]
    reach = max([abs(v) for v in finite] + [1.0]) * 1.1
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.axvline(0, color="black", linewidth=0.8)
        for label, d, lo, hi in panel["rows"]:
            y = len(labels) - 1 - labels.index(label)
            left, right = max(lo, -reach), min(hi, reach)
            color = "tab:blue" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
            ax.plot([left, right], [y, y], color=color, linewidth=2)
            ax.plot([d], [y], "o", color=color, markersize=4)
            for end, edge in ((lo, -reach), (hi, reach)):
                if not np.isfinite(end):
                    ax.annotate("", (edge, y), (edge * 0.9, y), arrowprops={"arrowstyle": "->", "color": color})
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_yticks(range(len(labels)), labels[::-1] if k == 0 else [""] * len(labels), fontsize=7)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("change against ReLU, points", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
