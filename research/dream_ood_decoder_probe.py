"""Can the base diffusion model draw its own in-distribution embeddings? (issue 40, "the experiments that tell a
scale limit from a defect", Dream-OOD / BOOD.) On a pbc-lt-cpu runs folder whose vmf-encoder, base diffusion model
and oracle are finished, the oracle labels images decoded through exactly the path of the outlier stage 3
(:func:`tailsynth.methods.dream_ood.stages.run_decode_outliers`: the vector replaces all conditioning tokens of the
class, DDIM ``decode.num_steps`` with CFG ``decode.guidance_scale`` against the null tokens, x_T of shard k of
class c drawn first from a generator seeded by derive_seed(decode.seed, c, k)) from:

(a) real head training embeddings, no noise: ``--per-class`` training images per head class (seeded choice),
    h = W f(x) of the encoder (eval mode, as stage 2), rescaled as stage 2 rescales the outliers: h / |h| * |a_c|
    (stage 3 decodes the vectors as written, with no further scaling);
(a-mix) the same, moved half-way (in angle) to the anchor: normalize(u + a_c / |a_c|) * |a_c|, u = h / |h|;
(b) the class anchors a_c themselves (= the base model's plain class-conditional sampling);
(c) reference: the real head test images.
(d) context: the oracle's predicted-class distribution of the dream-ood and bood outlier images of each source class:
    the run's decoded outliers when stage 3 is finished, otherwise, when stage 2 is, the first shard of each class
    decoded here from the run's outlier vectors (the same images stage 3 writes for that shard).

(a), (a-mix), (b) and the outliers' first shard of each class start from the same x_T, so they differ only in the
conditioning vector. Nothing here trains or runs a stage: the artifacts are found by fingerprint (plan mode) and the
script stops if the encoder, base model or oracle is not finished. The oracle only measures.

    nice -n 5 python research/dream_ood_decoder_probe.py --runs runs-pbc \
        --out-dir research/results/pbc-lt-dream-ood-decoder --grid-dir runs-pbc/figures

The image grid (per column: source image / decoded embedding / half-way / decoded anchor) shows data-set and
generated images and goes to ``--grid-dir`` (git-ignored, as the report's grids); ``probe.json`` goes to ``--out-dir``.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="pbc-lt-cpu")
    parser.add_argument("--runs", default="runs-pbc")
    parser.add_argument("--per-class", type=int, default=25, help="real embeddings and anchor images per head class")
    parser.add_argument("--seed", type=int, default=0, help="choice of the real training images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default="research/results/pbc-lt-dream-ood-decoder")
    parser.add_argument("--grid-dir", default="runs-pbc/figures")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.diffusion import sample_images
    from tailsynth.engine.artifacts import load_base, load_classifier, read_split, split_data
    from tailsynth.engine.runner import Runner
    from tailsynth.engine.store import ArtifactStore
    from tailsynth.methods import METHODS
    from tailsynth.methods.dream_ood.stages import id_embeddings, outlier_embeddings, outlier_images, read_outliers
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import StageGraph
    from tailsynth.training.trainer import predict
    from tailsynth.utils import derive_seed, stable_hash

    started = time.time()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = load_experiment(args.experiment, list(args.overrides))
    store = ArtifactStore(args.runs)
    graph = StageGraph(cfg, Runner(store, log=lambda _: None), plan_only=True)  # fingerprints only, runs nothing
    dcfg, bcfg = cfg.method_config("dream-ood"), cfg.method_config("bood")
    planned = {"split": graph.split(), "base": graph.base_diffusion(), "oracle": graph.oracle(),
               "encoder": graph.classifier("vmf-encoder", dcfg.encoder_seed)}
    for kind, method, mcfg in (("dream-ood", "dream-ood", dcfg), ("bood", "bood", bcfg)):
        emb = outlier_embeddings(graph, kind, planned["encoder"], METHODS.get(method).stage2_settings(mcfg))
        planned[f"outlier vectors {kind}"] = emb
        planned[f"outliers {kind}"] = outlier_images(graph, kind, emb, mcfg.decode)
    arts = {name: store.lookup(a.stage, a.fingerprint) for name, a in planned.items()}
    missing = [f"{n} ({planned[n].stage}/{planned[n].fingerprint})" for n in ("split", "base", "oracle", "encoder")
               if arts[n] is None]
    if missing:
        raise SystemExit(f"not finished in {args.runs}: {', '.join(missing)}")

    split = read_split(arts["split"])
    names, head = split.class_names, list(split.head_classes)
    d = dcfg.decode
    if bcfg.decode != d:
        print(f"note: bood decodes with {bcfg.decode}, dream-ood (used here) with {d}")
    encoder, _ = load_classifier(arts["encoder"].path)
    anchors = encoder.head.anchors.float().clone()
    backend = load_base(arts["base"].path, cfg.diffusion, device)
    backend.eval()
    with torch.no_grad():  # the encoder's anchors are the base model's conditioning rows (stage 1's init)
        rows = backend.anchor_embeddings(torch.arange(len(head))).float()
    anchor_gap = float((rows - anchors[head]).abs().max())
    latent = backend.latent_shape(cfg.diffusion.working_size(cfg.data.image_size))
    oracle, _ = load_classifier(arts["oracle"].path)

    # (a) real head training images, seeded choice; h = W f(x), rescaled to the anchor's norm as stage 2 does
    train = split_data(split, cfg.data, "train")
    rng = np.random.default_rng(args.seed)
    chosen = {c: np.sort(rng.choice(np.flatnonzero(train.labels == c), args.per_class, replace=False)) for c in head}
    source = {c: train.images[chosen[c]] for c in head}
    vectors: dict[str, dict[int, torch.Tensor]] = {"real embedding": {}, "real embedding, half-way to anchor": {},
                                                   "anchor": {}}
    encoder_stats = {}
    for c in head:
        h = id_embeddings(encoder, source[c], device).float()
        unit = F.normalize(h, dim=1)
        a = anchors[c]
        vectors["real embedding"][c] = unit * a.norm()
        vectors["real embedding, half-way to anchor"][c] = F.normalize(unit + a / a.norm(), dim=1) * a.norm()
        vectors["anchor"][c] = a.expand(args.per_class, -1).clone()
        with torch.no_grad():
            pred = encoder.head.logits_of_embedding(unit).argmax(1)
        encoder_stats[names[c]] = {"encoder_acc": float((pred == c).float().mean()),
                                   "cos_to_anchor": float(F.cosine_similarity(unit, a[None], dim=1).mean()),
                                   "cos_half_way_to_anchor": float(F.cosine_similarity(
                                       vectors["real embedding, half-way to anchor"][c], a[None], dim=1).mean()),
                                   "norm_h_mean": float(h.norm(dim=1).mean()), "norm_anchor": float(a.norm())}

    def decode(v: torch.Tensor, c: int) -> torch.Tensor:
        """Stage 3's ``make`` over the shards of class c: x_T of shard k from derive_seed(decode.seed, c, k)."""
        out = []
        for k in range(-(-len(v) // d.shard_size)):
            part = v[k * d.shard_size:(k + 1) * d.shard_size]
            generator = torch.Generator().manual_seed(derive_seed(d.seed, c, k))
            x_T = torch.randn((len(part), *latent), generator=generator).to(device)
            with torch.no_grad():
                cond = backend.condition_from_anchor(part.to(device), torch.full((len(part),), head.index(c)))
            out.append(sample_images(backend, x_T, cond, backend.null_condition(len(part)).to(device),
                                     d.num_steps, d.guidance_scale))
        return torch.cat(out)

    def to_u8(images01: torch.Tensor) -> np.ndarray:  # as the shard writer's PNGs
        return (images01.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)

    def oracle_rows(images: np.ndarray, labels: np.ndarray) -> dict:
        pred = predict(oracle, images, device)[0].argmax(1)
        per_class = {}
        for c in sorted(set(labels.tolist())):
            p = pred[labels == c]
            per_class[names[c]] = {"n": len(p), "oracle_acc": float((p == c).mean()),
                                   "predicted": {names[j]: int((p == j).sum()) for j in range(len(names))
                                                 if (p == j).any()}}
        return {"oracle_acc": float((pred == labels).mean()), "oracle_acc_wilson95": wilson(pred == labels),
                "oracle_acc_class_mean": float(np.mean([r["oracle_acc"] for r in per_class.values()])),
                "per_class": per_class}

    # the decoded images are kept in --grid-dir (git-ignored), keyed by everything they depend on, so a rerun once
    # the run's outliers exist only adds (d)
    key = stable_hash([arts["encoder"].fingerprint, arts["base"].fingerprint, d.model_dump(), args.per_class,
                       args.seed, list(vectors)])
    cache = Path(args.grid_dir) / f"decoder_probe_{key}.npz"
    stored = dict(np.load(cache)) if cache.is_file() else {}
    results, decoded, right = {}, {}, {}  # right: per image, oracle label == class, in the order of x_T
    for i, (row, by_class) in enumerate(vectors.items()):
        t0 = time.time()
        decoded[row] = {c: stored[f"{i}_{c}"] if f"{i}_{c}" in stored else to_u8(decode(by_class[c], c)) for c in head}
        images = np.concatenate([decoded[row][c] for c in head])
        labels = np.concatenate([np.full(len(decoded[row][c]), c) for c in head])
        results[row] = oracle_rows(images, labels) | {"decode_s": round(time.time() - t0, 1),
                                                      "from_cache": all(f"{i}_{c}" in stored for c in head)}
        right[row] = predict(oracle, images, device)[0].argmax(1) == labels
        print(f"{row}: oracle {results[row]['oracle_acc']:.3f} ({results[row]['decode_s']} s)", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **{f"{i}_{c}": decoded[row][c] for i, row in enumerate(vectors) for c in head})
    test = split_data(split, cfg.data, "test")
    keep = np.isin(test.labels, head)
    results["real head test images"] = oracle_rows(test.images[keep], test.labels[keep])
    results["real head training images chosen (the oracle trained on them)"] = oracle_rows(
        np.concatenate([source[c] for c in head]), np.concatenate([np.full(args.per_class, c) for c in head]))

    outliers, stage2 = {}, {}
    for kind in ("dream-ood", "bood"):
        art, emb = arts[f"outliers {kind}"], arts[f"outlier vectors {kind}"]
        if emb is not None:  # stage 2's statistics (cosine of ID embeddings and outliers to the anchor)
            stage2[kind] = json.loads(emb.file("summary.json").read_text())
        if art is not None:  # the run's decoded outliers, all of them
            syn = SyntheticSet.read(art.path).select(role="outlier")
            images, labels = syn.load_images(names, cfg.data.image_size, cfg.data.channels)
            outliers[kind] = oracle_rows(images, labels) | {"images": "all decoded outliers of the run",
                                                            "path": str(art.path)}
        elif emb is not None:  # stage 3 not finished: its first shard of each class, decoded here the same way
            data = read_outliers(emb.path)
            vec, cls = torch.as_tensor(data["vectors"]), data["classes"]
            shard_cache = Path(args.grid_dir) / f"decoder_probe_outliers_{stable_hash([key, emb.fingerprint])}.npz"
            kept = dict(np.load(shard_cache)) if shard_cache.is_file() else {}
            firsts = {c: kept[str(c)] if str(c) in kept else to_u8(decode(vec[cls == c][:d.shard_size], c))
                      for c in head}
            np.savez_compressed(shard_cache, **{str(c): v for c, v in firsts.items()})
            images = np.concatenate([firsts[c] for c in head])
            labels = np.concatenate([np.full(len(firsts[c]), c) for c in head])
            if len(images) == len(right["anchor"]):  # the same x_T as rows (a) and (b)
                right[f"{kind} outliers, shard 0"] = predict(oracle, images, device)[0].argmax(1) == labels
            outliers[kind] = oracle_rows(images, labels) | {
                "images": f"shard 0 of each class ({d.shard_size} per class, the x_T of rows (a) and (b)), decoded "
                          f"here from {emb.stage}/{emb.fingerprint}: stage 3 not finished",
                "path": str(emb.path)}
        else:
            todo = planned[f"outlier vectors {kind}"]
            outliers[kind] = f"not finished: {todo.stage}/{todo.fingerprint}"

    # paired over x_T (McNemar's discordant pairs): each decoded row against the anchor decoded from the same x_T
    a = right["anchor"]
    paired = {row: {"both_right": int((r & a).sum()), "only_anchor_right": int((~r & a).sum()),
                    "only_this_right": int((r & ~a).sum()), "both_wrong": int((~r & ~a).sum()),
                    "mcnemar_exact_p": mcnemar(int((~r & a).sum()), int((r & ~a).sum()))}
              for row, r in right.items() if row != "anchor"}
    grid_path = Path(args.grid_dir) / f"decoder_probe_{cfg.benchmark}.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid_path.write_bytes(grid_png(source, decoded, head, names))
    record = {
        "command": "nice -n 5 python research/dream_ood_decoder_probe.py " + " ".join(
            [f"--experiment {args.experiment}", f"--runs {args.runs}", f"--per-class {args.per_class}",
             f"--seed {args.seed}", f"--threads {args.threads}", f"--out-dir {args.out_dir}",
             f"--grid-dir {args.grid_dir}", *args.overrides]),
        "artifacts": {n: (f"{a.stage}/{a.fingerprint}" if a is not None else None) for n, a in arts.items()},
        "decode": d.model_dump(), "max_abs_encoder_anchor_minus_base_row": anchor_gap,
        "per_class_images": args.per_class, "chosen_train_indices": {names[c]: chosen[c].tolist() for c in head},
        "encoder_on_chosen": encoder_stats, "oracle": results, "outliers": outliers, "stage2_summary": stage2,
        "paired_with_anchor_same_x_T": paired,
        "grid": str(grid_path), "decoded_cache": str(cache), "threads": args.threads,
        "wall_s": round(time.time() - started, 1),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(record, indent=1) + "\n")
    print(table(record, names, head))


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of b vs c discordant pairs (binomial, p = 1/2)."""
    from scipy.stats import binomtest
    return float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0


def wilson(hits: np.ndarray, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a proportion (Wilson 1927)."""
    n, p = len(hits), float(np.mean(hits))
    shrink = 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / shrink, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / shrink
    return [round(centre - half, 4), round(centre + half, 4)]


def table(record: dict, names: list[str], head: list[int]) -> str:
    """Markdown: oracle accuracy (%) per head class and over the images, one line per image set."""
    cols = [names[c] for c in head]
    lines = ["| images | " + " | ".join(cols) + " | all (95 % Wilson) |", "|:---|" + "---:|" * (len(cols) + 1)]
    rows = [(k, v) for k, v in record["oracle"].items()]
    rows += [(f"{k} outliers (own source class)", v) for k, v in record["outliers"].items() if isinstance(v, dict)]
    for name, r in rows:
        cells = [f"{100 * r['per_class'][n]['oracle_acc']:.1f}" if n in r["per_class"] else "–" for n in cols]
        lo, hi = r["oracle_acc_wilson95"]
        all_cell = f"{100 * r['oracle_acc']:.1f} ({100 * lo:.0f}–{100 * hi:.0f})"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {all_cell} |")
    return "\n".join(lines)


def grid_png(source: dict, decoded: dict, head: list[int], names: list[str], per_class: int = 6,
             scale: int = 2) -> bytes:
    """Per head class a block of four rows: source image, its decoded embedding, the embedding half-way to the anchor
    and the anchor, all three decoded from the same x_T; ``per_class`` columns."""
    from PIL import Image, ImageDraw
    rows = [("source", source), ("decoded embedding", decoded["real embedding"]),
            ("decoded half-way", decoded["real embedding, half-way to anchor"]), ("decoded anchor", decoded["anchor"])]
    size = next(iter(source.values())).shape[1] * scale
    label_w, gap = 175, 6
    height = len(head) * (len(rows) * size + gap)
    canvas = Image.new("RGB", (label_w + per_class * size, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for c in head:
        for name, images in rows:
            draw.text((4, y + size // 2 - 6), f"{names[c]}: {name}", fill="black")
            for j in range(min(per_class, len(images[c]))):
                tile = Image.fromarray(images[c][j].squeeze()).convert("RGB").resize((size, size), Image.NEAREST)
                canvas.paste(tile, (label_w + j * size, y))
            y += size
        y += gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    main()
