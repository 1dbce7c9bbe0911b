"""Image grids for the report: LoGex Fig. 2/5 (train images | synthetic images, titled by the oracle), labelled
rows, and image pairs (a synthetic image | its nearest training image)."""
from __future__ import annotations

import io

import numpy as np


def sample_grid(columns, split, per_class: int, classes=None) -> bytes:
    """Rows: tail classes (or ``classes``); column blocks: train images, then each method's synthetic images; each
    image titled with the oracle's predicted class (green when right, red when wrong; a block whose predictions
    are None has no titles)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    tail = list(split.tail_classes if classes is None else classes)
    n_cols = per_class * len(columns)
    fig = Figure(figsize=(1.1 * n_cols + 1.5, 1.25 * len(tail) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(tail), n_cols, squeeze=False)
    for r, c in enumerate(tail):
        for b, (title, images, labels, pred) in enumerate(columns):
            idx = np.flatnonzero(labels == c)[:per_class]
            for j in range(per_class):
                ax = axes[r][b * per_class + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 and j == 0:
                    ax.set_title(title, fontsize=9, loc="left", fontweight="bold")
                if b == 0 and j == 0:
                    ax.set_ylabel(split.class_names[c], fontsize=8)
                if j >= len(idx):
                    ax.axis("off")
                    continue
                img = images[idx[j]]
                ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                          interpolation="nearest")  # the real pixels; also keeps the embedded PNG small
                if pred is None:
                    continue
                ok = pred[idx[j]] == c
                ax.set_xlabel(split.class_names[int(pred[idx[j]])][:12], fontsize=6, color="green" if ok else "red")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=64)
    return buffer.getvalue()


def labelled_rows(rows, title: str = "") -> bytes:
    """A PNG grid: one row per (label, uint8 images (n, H, W, C)), the label on the left (minority guidance's
    level x scale grids, the lowest / median / highest-scored real images)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    n_cols = max(len(images) for _, images in rows)
    fig = Figure(figsize=(0.9 * n_cols + 2.2, 0.95 * len(rows) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for j in range(n_cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if j >= len(images):
                ax.axis("off")
                continue
            img = images[j]
            ax.imshow(img[:, :, 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=255)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def pair_rows(rows, title: str = "") -> bytes:
    """A PNG grid of image pairs: one row per (label, [(left, right, caption), ...]) with uint8 images (H, W, C);
    each pair side by side, the caption under it (the memorisation check: a synthetic image | its nearest
    training image of the class)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    n_pairs = max([len(pairs) for _, pairs in rows] + [1])
    fig = Figure(figsize=(1.9 * n_pairs + 2.2, 1.15 * max(1, len(rows)) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(rows)), 2 * n_pairs, squeeze=False)
    for r, (label, pairs) in enumerate(rows):
        for j in range(2 * n_pairs):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if j // 2 >= len(pairs):
                ax.axis("off")
                continue
            left, right, caption = pairs[j // 2]
            img = left if j % 2 == 0 else right
            ax.imshow(img[:, :, 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=255, interpolation="nearest")
            if r == 0:
                ax.set_title("synthetic" if j % 2 == 0 else "nearest train", fontsize=6)
            if j % 2 == 0 and caption:
                ax.set_xlabel(caption, fontsize=6, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    return buffer.getvalue()
