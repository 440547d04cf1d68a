"""Figures of a run: DataFrames in, `matplotlib.figure.Figure` out. Compute only: no pyplot (no
global state), no files; the caller writes `figure_to_png_bytes(fig)` where it wants."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

METRIC_TITLES = {"precision": "Precision", "recall": "Recall", "f1": "F1"}
PER_CLASS_COLUMNS = ("epoch", "class", "precision", "recall", "f1", "support")
EPOCH_COLUMNS = ("epoch", "split", "accuracy", "loss")
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D")
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RELIABILITY_COLUMNS = ("confidence", "accuracy", "count")


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}; it has {list(frame.columns)}")


def _class_style(index: int) -> dict[str, object]:
    """Colour, line style and marker for the index-th class: 20 colours x 4 styles stay distinct
    for 80 classes; neighbours in the legend differ in colour."""
    colours = colormaps["tab20"].colors
    return {
        "color": colours[index % len(colours)],
        "linestyle": LINE_STYLES[(index // len(colours)) % len(LINE_STYLES)],
        "marker": MARKERS[(index // len(colours)) % len(MARKERS)],
    }


def _legend_columns(n_entries: int) -> int:
    return 1 if n_entries <= 20 else 2


def class_metric_figure(
    per_class_history: pd.DataFrame,
    metric: Literal["precision", "recall", "f1"],
    split: str = "val",
) -> Figure:
    """One line per class: `metric` over epochs. If the frame has a `split` column, only rows of
    `split` are drawn; `split` also names the data in the title."""
    if metric not in METRIC_TITLES:
        raise ValueError(f"metric must be one of {list(METRIC_TITLES)}, got {metric!r}")
    _require_columns(per_class_history, PER_CLASS_COLUMNS, "per_class_history")
    rows = per_class_history
    if "split" in rows.columns:
        rows = rows[rows["split"] == split]
    classes = list(dict.fromkeys(rows["class"]))  # first-seen order, as written per epoch
    fig = Figure(figsize=(9.0 + 2.0 * _legend_columns(len(classes)), 5.0), layout="constrained")
    ax = fig.add_subplot()
    for index, name in enumerate(classes):
        line = rows[rows["class"] == name].sort_values("epoch")
        style = _class_style(index)
        # clip_on=False: values of exactly 0 or 1 sit on the frame and stay whole.
        ax.plot(line["epoch"], line[metric], label=str(name), markersize=3, clip_on=False, **style)
    title = METRIC_TITLES[metric]
    ax.set(title=f"{title} per class ({split})", xlabel="epoch", ylabel=title.lower())
    ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if classes:
        fig.legend(
            loc="outside right upper",
            ncols=_legend_columns(len(classes)),
            fontsize="small",
            title="class",
        )
    return fig


def _plot_splits(ax: Axes, epochs: pd.DataFrame, column: str) -> None:
    for split, rows in epochs.groupby("split", sort=True):
        rows = rows.sort_values("epoch")
        colour = SPLIT_COLOURS.get(str(split))
        ax.plot(
            rows["epoch"],
            rows[column],
            marker="o",
            markersize=3,
            color=colour,
            label=split,
            clip_on=False,
        )


def _mark_best(ax: Axes, best_epoch: int) -> None:
    ax.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1.0, label="best epoch")


def curves_figure(epochs: pd.DataFrame, best_epoch: int | None = None) -> Figure:
    """Two panels over epochs, one line per split: accuracy (left) and loss (right)."""
    _require_columns(epochs, EPOCH_COLUMNS, "epochs")
    fig = Figure(figsize=(11.0, 4.5), layout="constrained")
    accuracy_ax, loss_ax = fig.subplots(1, 2)
    panels = ((accuracy_ax, "accuracy", "Accuracy"), (loss_ax, "loss", "Loss"))
    for ax, column, title in panels:
        _plot_splits(ax, epochs, column)
        if best_epoch is not None:
            _mark_best(ax, best_epoch)
        ax.set(title=title, xlabel="epoch", ylabel=column)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    accuracy_ax.set_ylim(0.0, 1.0)
    suffix = f" (best epoch {best_epoch})" if best_epoch is not None else ""
    fig.suptitle(f"Training curves{suffix}")
    return fig


def _row_fractions(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total; rows without samples stay 0."""
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def _annotate_counts(ax: Axes, counts: np.ndarray, shade: np.ndarray, fontsize: float) -> None:
    """Write each non-zero count in its cell, white on dark cells. Zeros stay blank so the
    mistakes stand out."""
    threshold = 0.5 * shade.max() if shade.max() > 0 else 1.0
    for row, col in zip(*np.nonzero(counts), strict=True):
        colour = "white" if shade[row, col] > threshold else "black"
        text = str(counts[row, col])
        ax.text(col, row, text, ha="center", va="center", color=colour, fontsize=fontsize)


def confusion_matrix_figure(cm: pd.DataFrame, normalize: bool = True) -> Figure:
    """Heatmap of `cm` (rows: true class, columns: predicted), counts written in the cells.
    normalize=True colours each cell by its share of the row (recall on the diagonal)."""
    if cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty square frame, got shape {cm.shape}")
    counts = cm.to_numpy(dtype=np.int64)
    shade = _row_fractions(counts) if normalize else counts.astype(np.float64)
    n = counts.shape[0]
    side = min(22.0, max(5.0, 0.38 * n + 3.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(
        image, ax=ax, shrink=0.8, label="fraction of the true class" if normalize else "count"
    )
    fontsize = float(np.clip(220.0 / n, 6.5, 10.0))  # cells are ~0.38 in wide
    _annotate_counts(ax, counts, shade, fontsize)
    ax.set_xticks(
        range(n), [str(c) for c in cm.columns], rotation=45, ha="right", fontsize=fontsize
    )
    ax.set_yticks(range(n), [str(c) for c in cm.index], fontsize=fontsize)
    ax.set(xlabel="predicted class", ylabel="true class")
    kind = "row-normalised" if normalize else "counts"
    ax.set_title(f"Confusion matrix ({kind}; {int(counts.sum())} images)")
    return fig


def _reliability_panel(ax: Axes, title: str, curves: dict[str, pd.DataFrame]) -> None:
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1.0, label="calibrated")
    for index, (label, table) in enumerate(curves.items()):
        _require_columns(table, RELIABILITY_COLUMNS, f"reliability table {label!r}")
        used = table[table["count"] > 0]
        style = {
            "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
        }
        ax.plot(used["confidence"], used["accuracy"], label=label, clip_on=False, **style)
    ax.set(title=title, xlabel="confidence (top probability)", ylabel="accuracy")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")


def calibration_figure(panels: dict[str, dict[str, pd.DataFrame]]) -> Figure:
    """Reliability diagrams side by side, one panel per model (`panels`: title -> {curve label
    -> a calibration.reliability_table}): each non-empty bin's accuracy against its mean
    confidence, with the diagonal a calibrated model follows. Bins below the diagonal are
    over-confident."""
    if not panels:
        raise ValueError("panels is empty: give at least one model's reliability tables")
    fig = Figure(figsize=(5.0 * len(panels), 5.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels.items(), strict=True):
        _reliability_panel(ax, title, curves)
    fig.suptitle("Calibration on val")
    return fig


def figure_to_png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    """The figure as PNG bytes (writers store them atomically)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
