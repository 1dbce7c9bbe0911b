"""Report sections of the Dream-OOD / BOOD outlier sets: per class statistics of the outlier embeddings, the
PCA plot of ID embeddings and outliers, and a grid of real head images beside the decoded outliers."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...engine.artifacts import split_data
from ...report.tables import Table


def pca_figure(id_vectors: np.ndarray, id_classes: np.ndarray, sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
               class_names, title: str, per_class: bool = False) -> bytes:
    """PNG of the first two principal components of the normalised ID embeddings ``id_vectors`` (N, D), with each
    set's outlier vectors ``sets[name] = (vectors (M, D), source classes (M,))`` normalised and projected on top;
    one panel for all classes, or (``per_class``) one panel per class."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    mean = id_vectors.mean(0)
    _, _, vt = np.linalg.svd(id_vectors - mean, full_matrices=False)
    project = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True) - mean) @ vt[:2].T  # noqa: E731
    classes = sorted(set(id_classes.tolist()))
    panels = [[c] for c in classes] if per_class else [classes]
    fig = Figure(figsize=(4.2 * len(panels), 4.2) if per_class else (5.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for j, c in enumerate(panel):
            p = project(id_vectors[id_classes == c])
            colour = "grey" if per_class else f"C{j % 10}"
            ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.3, color=colour, label=f"{class_names[c]} (ID)")
            for k, (name, (vectors, source)) in enumerate(sets.items()):
                q = project(vectors[source == c])
                ax.scatter(q[:, 0], q[:, 1], s=10, marker="x+^v"[k % 4], color=f"C{k if per_class else j % 10}",
                           label=f"{class_names[c]} {name}" if not per_class else name)
        ax.set_title(class_names[panel[0]] if per_class else title, fontsize=9)
        ax.legend(fontsize=6, markerscale=2)
    if per_class:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def outlier_table(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Table:
    table = Table("Imagined outliers (Dream-OOD / BOOD stage 2)",
                  ["method", "class", "outliers", "cos(ID, anchor)", "cos(outlier, anchor)", "still own class"],
                  caption="Cosines of the normalised embeddings to the class anchor (mean); 'still own class': share "
                          "of the outlier embeddings that the encoder's cosine classifier still assigns to the "
                          "class they came from.")
    for method, classes in summaries.items():
        for name, e in classes.items():
            table.rows.append([(method, ""), (name, ""), (str(e["n"]), ""), (f"{e['id_cos_to_anchor']:.3f}", ""),
                               (f"{e['outlier_cos_to_anchor']:.3f}", ""),
                               (f"{100 * e['outliers_still_own_class']:.1f} %", "")])
    return table


def outlier_grid(sets: Mapping[str, Any], split, data_cfg, per_class: int = 6) -> bytes:
    """Rows: head classes; blocks: real training images, then each method's decoded outliers."""
    from ...data.synthetic import SyntheticSet
    from ...report.grids import sample_grid
    train = split_data(split, data_cfg, "train")
    columns = [("train", train.images, train.labels, None)]
    for method, artifact in sets.items():
        images, labels = SyntheticSet.read(artifact.path).load_images(split.class_names, data_cfg.image_size,
                                                                      data_cfg.channels)
        columns.append((f"{method} outliers", images, labels, None))
    return sample_grid(columns, split, per_class, classes=list(split.head_classes))


def outlier_sections(outlier_sets: Mapping[str, tuple], split, data_cfg) -> tuple[list, dict]:
    from ...utils import read_json
    summaries = {kind: read_json(emb.file("summary.json")) for kind, (emb, _) in outlier_sets.items()}
    sections: list = [outlier_table(summaries)]
    for kind, (emb, _) in outlier_sets.items():
        sections.append((f"{kind}: normalised ID embeddings (dots) and outliers (x) per head class, first two "
                         "principal components of the ID embeddings", emb.file("pca.png").read_bytes()))
    sections.append(("Real head training images | decoded outliers (the source class's conditioning replaced by "
                     "an outlier embedding)", outlier_grid({k: img for k, (_, img) in outlier_sets.items()},
                                                           split, data_cfg)))
    return sections, {"outliers": summaries}
