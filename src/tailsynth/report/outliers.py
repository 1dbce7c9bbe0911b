"""Report sections of the Dream-OOD / BOOD outlier sets: per class statistics of the outlier embeddings, the
PCA plot of ID embeddings and outliers, and a grid of real head images beside the decoded outliers."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .tables import Table


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
    from ..data.synthetic import SyntheticSet
    from ..pipeline.artifacts import split_data
    from .grids import sample_grid
    train = split_data(split, data_cfg, "train")
    columns = [("train", train.images, train.labels, None)]
    for method, artifact in sets.items():
        images, labels = SyntheticSet.read(artifact.path).load_images(split.class_names, data_cfg.image_size,
                                                                      data_cfg.channels)
        columns.append((f"{method} outliers", images, labels, None))
    return sample_grid(columns, split, per_class, classes=list(split.head_classes))


def outlier_sections(outlier_sets: Mapping[str, tuple], split, data_cfg) -> tuple[list, dict]:
    from ..utils import read_json
    summaries = {kind: read_json(emb.file("summary.json")) for kind, (emb, _) in outlier_sets.items()}
    sections: list = [outlier_table(summaries)]
    for kind, (emb, _) in outlier_sets.items():
        sections.append((f"{kind}: normalised ID embeddings (dots) and outliers (x) per head class, first two "
                         "principal components of the ID embeddings", emb.file("pca.png").read_bytes()))
    sections.append(("Real head training images | decoded outliers (the source class's conditioning replaced by "
                     "an outlier embedding)", outlier_grid({k: img for k, (_, img) in outlier_sets.items()},
                                                           split, data_cfg)))
    return sections, {"outliers": summaries}
