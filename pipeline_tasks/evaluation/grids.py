"""Grids of images: the augmentation preview of pretraining, the most confident mistakes of
evaluation, the contact sheet of ``suggest-labels``. Apart from the charts (``plots``) so that
pretraining's code is what draws its own picture, not every chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline_tasks.evaluation.figures import figure, save, show


def view_grid(rows: np.ndarray, path: Path, row_labels: Sequence[str] | None = None) -> Path:
    """Augmentation preview: ``rows`` uint8 ``[N, 3, C, H, W]`` (an image, then its two views),
    one row per image, labelled with ``row_labels`` when given."""
    n = len(rows)
    fig, _ = figure(6, 2 * max(n, 1) + 0.4, ncols=1)
    fig.clear()
    axes = fig.subplots(max(n, 1), 3, squeeze=False)
    for i, row in enumerate(rows):
        for j, (image, title) in enumerate(zip(row, ("image", "view 1", "view 2"), strict=True)):
            ax = axes[i][j]
            show(ax, image)
            if i == 0:
                ax.set_title(title)
        if row_labels is not None:
            axes[i][0].set_ylabel(row_labels[i])
    return save(fig, path)


def _image_grid(images: np.ndarray, titles: Sequence[str], path: Path, columns: int, title: str) -> Path:
    """``images`` uint8 ``[N, C, H, W]`` in rows of ``columns``, each under its title."""
    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig, _ = figure(1.6 * cols, 1.7 * rows + 0.5)
    fig.clear()
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            show(ax, images[k])
            ax.set_title(titles[k], fontsize=7)
        else:
            ax.set_axis_off()
    fig.suptitle(title)
    return save(fig, path)


def worst_misclassified(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 8) -> Path:
    """A grid of test images the model got wrong, most confident first: ``images`` uint8
    ``[N, C, H, W]``, each under its title ("true -> predicted (confidence)")."""
    return _image_grid(images, titles, path, columns,
                       "the most confident mistakes on the test split (true -> predicted)" if len(images)
                       else "no mistakes")


def suggestion_sheet(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 10) -> Path:
    """A contact sheet: ``images`` uint8 ``[N, C, H, W]`` in rows of ``columns``, each under its
    title (the images to label, with their rank and cluster size)."""
    return _image_grid(images, titles, path, columns, f"{len(images)} images to label, most typical first")
