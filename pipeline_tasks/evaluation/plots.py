"""The pictures a run logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def render_confusion(cm: np.ndarray, classes: list[str], path: Path, cell: int = 40) -> None:
    """A PNG heat map with counts (PIL only: the stages stay importable on a bare GPU box)."""
    n, margin = len(classes), 60
    img = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    peak = max(int(cm.max()), 1)
    draw.text((margin, 5), "confusion matrix (rows: true, cols: predicted)", fill="black")
    for i in range(n):
        draw.text((5, margin + i * cell + cell // 3), classes[i][:8], fill="black")
        draw.text((margin + i * cell + 4, margin - 18), classes[i][:5], fill="black")
        for j in range(n):
            shade = int(255 * (1 - cm[i, j] / peak))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255),
                           outline="gray")
            draw.text((x0 + 4, y0 + cell // 3), str(int(cm[i, j])),
                      fill="white" if shade < 128 else "black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
