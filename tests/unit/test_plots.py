"""camtrap.plots: the figures have the lines, labels and titles a reader relies on, and render."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from camtrap.plots import (
    PNG_SIGNATURE,
    class_metric_figure,
    confusion_matrix_figure,
    curves_figure,
    figure_to_png_bytes,
)
from camtrap.runfolder import PLOT_FILES


def _per_class_history(n_classes: int, n_epochs: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "epoch": epoch,
            "class": f"class_{c:02d}",
            "precision": rng.uniform(),
            "recall": rng.uniform(),
            "f1": rng.uniform(),
            "support": 5,
        }
        for epoch in range(1, n_epochs + 1)
        for c in range(n_classes)
    ]
    return pd.DataFrame(rows)


def _epochs(n_epochs: int = 4) -> pd.DataFrame:
    rows = [
        {
            "epoch": epoch,
            "split": split,
            "accuracy": 0.2 * epoch if split == "train" else 0.15 * epoch,
            "loss": 2.0 / epoch,
            "log_loss": 2.0 / epoch,
            "top3_accuracy": 0.9,
        }
        for epoch in range(1, n_epochs + 1)
        for split in ("train", "val")
    ]
    return pd.DataFrame(rows)


def _confusion(n_classes: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = [f"species_{i}" for i in range(n_classes)]
    counts = rng.integers(0, 5, size=(n_classes, n_classes)) + np.eye(n_classes, dtype=int) * 20
    return pd.DataFrame(
        counts,
        index=pd.Index(names, name="true"),
        columns=pd.Index(names, name="predicted"),
    )


def test_plot_files_names_the_six_outputs() -> None:
    assert set(PLOT_FILES) == {
        "class_precision.png",
        "class_recalls.png",
        "class_f1.png",
        "curves.png",
        "confusion_matrix.png",
        "calibration.png",
    }
    assert all(PLOT_FILES.values())  # every file has a description


@pytest.mark.parametrize(("metric", "title"), [("precision", "Precision"), ("f1", "F1")])
def test_class_metric_figure_has_one_line_per_class(metric: str, title: str) -> None:
    history = _per_class_history(n_classes=3, n_epochs=4)
    fig = class_metric_figure(history, metric)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 3  # 3 classes, nothing else drawn
    assert [line.get_label() for line in lines] == ["class_00", "class_01", "class_02"]
    # each line is that class's metric over epochs 1..4, in epoch order
    first = history[history["class"] == "class_00"]
    assert list(lines[0].get_xdata()) == [1, 2, 3, 4]
    assert list(lines[0].get_ydata()) == pytest.approx(first[metric].tolist())
    assert ax.get_title() == f"{title} per class (val)"
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylim() == (0.0, 1.0)
    (legend,) = fig.legends  # the legend sits on the figure, outside the axes
    assert [t.get_text() for t in legend.get_texts()] == ["class_00", "class_01", "class_02"]


def test_class_metric_figure_filters_split_column() -> None:
    train = _per_class_history(2, 3).assign(split="train", recall=0.1)
    val = _per_class_history(2, 3).assign(split="val", recall=0.9)
    fig = class_metric_figure(pd.concat([train, val]), "recall", split="val")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert set(lines[0].get_ydata()) == {0.9}  # only the val rows were drawn


def test_class_metric_figure_styles_stay_distinct_for_30_classes() -> None:
    fig = class_metric_figure(_per_class_history(n_classes=30, n_epochs=3), "recall")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 30
    styles = {(str(line.get_color()), line.get_linestyle()) for line in lines}
    assert len(styles) == 30  # no two classes share colour and line style
    assert fig.legends[0]._ncols == 2  # more than 20 entries -> two legend columns


def test_class_metric_figure_rejects_unknown_metric_and_missing_columns() -> None:
    history = _per_class_history(2, 2)
    with pytest.raises(ValueError, match="metric must be one of"):
        class_metric_figure(history, "accuracy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing columns"):
        class_metric_figure(history.drop(columns="f1"), "precision")


def test_curves_figure_two_panels_train_and_val() -> None:
    fig = curves_figure(_epochs())
    accuracy_ax, loss_ax = fig.axes
    assert accuracy_ax.get_title() == "Accuracy"
    assert loss_ax.get_title() == "Loss"
    assert [line.get_label() for line in accuracy_ax.get_lines()] == ["train", "val"]
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "val"]
    # the val accuracy line is 0.15 * epoch (see _epochs)
    val_line = accuracy_ax.get_lines()[1]
    assert list(val_line.get_ydata()) == pytest.approx([0.15, 0.3, 0.45, 0.6])
    assert fig.get_suptitle() == "Training curves"


def test_curves_figure_marks_best_epoch_on_both_panels() -> None:
    fig = curves_figure(_epochs(), best_epoch=3)
    for ax in fig.axes:
        lines = ax.get_lines()
        assert len(lines) == 3  # train, val, best-epoch marker
        marker = lines[-1]
        assert marker.get_label() == "best epoch"
        assert list(marker.get_xdata()) == [3, 3]  # a vertical line at x = 3
    assert fig.get_suptitle() == "Training curves (best epoch 3)"


def test_confusion_matrix_figure_annotates_nonzero_counts() -> None:
    cm = pd.DataFrame(
        [[3, 1], [0, 2]],
        index=pd.Index(["cat", "dog"], name="true"),
        columns=pd.Index(["cat", "dog"], name="predicted"),
    )
    fig = confusion_matrix_figure(cm)
    ax = fig.axes[0]  # axes[1] is the colour bar
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3"]  # the zero stays blank
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]
    assert ax.get_xlabel() == "predicted class"
    assert ax.get_ylabel() == "true class"
    assert ax.get_title() == "Confusion matrix (row-normalised; 6 images)"
    # row-normalised colours: row cat is 3/4, 1/4; row dog is 0, 1
    shade = np.asarray(ax.get_images()[0].get_array())
    np.testing.assert_allclose(shade, [[0.75, 0.25], [0.0, 1.0]])


def test_confusion_matrix_figure_counts_mode() -> None:
    fig = confusion_matrix_figure(_confusion(3), normalize=False)
    ax = fig.axes[0]
    assert "counts" in ax.get_title()
    assert np.asarray(ax.get_images()[0].get_array()).max() >= 20  # raw counts, not fractions


def test_confusion_matrix_figure_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_figure(pd.DataFrame([[1, 2, 3], [4, 5, 6]]))


def test_figure_to_png_bytes_renders_png() -> None:
    data = figure_to_png_bytes(curves_figure(_epochs(), best_epoch=2), dpi=50)
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000  # a real image, not just a header


def test_large_class_counts_render() -> None:
    # 40 classes: the widest the seed's data sets go; both figures must lay out and render
    confusion_png = figure_to_png_bytes(confusion_matrix_figure(_confusion(40)), dpi=30)
    history_png = figure_to_png_bytes(class_metric_figure(_per_class_history(40, 2), "f1"), dpi=30)
    assert confusion_png.startswith(PNG_SIGNATURE)
    assert history_png.startswith(PNG_SIGNATURE)
