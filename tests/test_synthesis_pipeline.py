"""LoGex-only-LoRA through the pipeline on a tiny model: base (head only) -> LoRA (tail only) -> sharded,
resumable synthesis -> classifier on real + synthetic."""
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tailsynth.data import Split
from tailsynth.data.synthetic import SyntheticSet
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment

from tiny import quiet, tiny

pytestmark = pytest.mark.slow

TINY = tiny("methods=[logex-lora]", "synthesis={n_per_class: 3, shard_size: 2, num_steps: 3, aux_method: ce}")


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def test_logex_lora_pipeline_and_resumed_synthesis(tmp_path, monkeypatch):
    cfg = load_experiment("demo", TINY)
    result = run_experiment(cfg, tmp_path / "runs", log=quiet)
    synth_dir = next(p for p in (tmp_path / "runs" / "synthesize").iterdir() if not p.name.startswith("."))
    rows = list(csv.DictReader(open(synth_dir / "synthetic.csv")))
    split = Split.read(next((tmp_path / "runs" / "split").glob("*/split.csv")))
    tail_names = [split.class_names[c] for c in split.tail_classes]
    assert sorted({r["class"] for r in rows}) == sorted(tail_names)
    assert len(rows) == 3 * len(tail_names)
    assert all(0.0 <= float(r["score"]) <= 1.0 and r["method"] == "lora" and r["role"] == "tail" for r in rows)
    images, labels = SyntheticSet.read(synth_dir).load_images(split.class_names, 8, 1)
    assert images.shape == (len(rows), 8, 8, 1) and set(labels) == set(split.tail_classes)

    # the base diffusion saw head images only; LoRA only tail images
    base = json.loads(next((tmp_path / "runs" / "train_diffusion").glob("*/manifest.json")).read_text())
    lora = json.loads(next((tmp_path / "runs" / "adapt_lora").glob("*/manifest.json")).read_text())
    counts = split.counts()
    assert base["result"]["n_images"] == sum(counts[n]["train"] for n in (split.class_names[c] for c in split.head_classes))
    assert lora["result"]["n_images"] == 10 * len(tail_names)

    # the final classifier trained on real + synthetic: more training samples than the real split
    clf = json.loads(next((tmp_path / "runs" / "train_classifier").glob("*/history.json")).read_text())
    assert clf["best_epoch"] == 1

    # interrupted synthesis: drop the artifact, keep two shards as "done before the kill", rerun
    reference = digest(synth_dir)
    partial = synth_dir.with_name(synth_dir.name + ".partial")
    synth_dir.rename(partial)
    (partial / "manifest.json").unlink()
    (partial / "synthetic.csv").unlink()
    shards = sorted((partial / "shards").glob("*.json"))
    for marker in shards[2:]:
        for row in json.loads(marker.read_text()):
            (partial / row["file"]).unlink()
        marker.unlink()
    run_experiment(cfg, tmp_path / "runs", log=quiet)
    assert digest(synth_dir) == reference

    # the oracle's verdict and the sample grid reach the report
    quality = json.loads(next((tmp_path / "runs" / "synthetic_quality").glob("*/quality.json")).read_text())
    assert set(quality) == {"real_tail_test", "lora"}
    assert quality["lora"]["n"] == len(rows)
    assert 0.0 <= quality["lora"]["overall"] <= 1.0
    report_md = (result.report_dir / "report.md").read_text()
    assert "oracle acc." in report_md and "synthetic: lora" in report_md
    assert (result.report_dir / "report.html").read_text().count("data:image/png;base64,") >= 4


def test_stable_diffusion_backend_through_the_pipeline(tmp_path):
    """`--sd-path` with a tiny SD pipeline saved from configs: LoRA on the tail prompts, synthesis, classifier."""
    from tailsynth.diffusion import build_tiny_sd_pipeline
    sd = build_tiny_sd_pipeline(tmp_path / "tiny-sd")
    overrides = [o for o in TINY if not o.startswith(("diffusion.pixel", "diffusion.base", "oracle"))] + [
        "diffusion.backend=sd", f"diffusion.sd_path={sd}", "diffusion.sd_resolution=16", "data.channels=3"]
    result = run_experiment(load_experiment("demo", overrides), tmp_path / "runs", log=quiet)
    synth_dir = next(p for p in (tmp_path / "runs" / "synthesize").iterdir() if not p.name.startswith("."))
    rows = list(csv.DictReader(open(synth_dir / "synthetic.csv")))
    assert len(rows) == 3 * 5
    from PIL import Image
    assert Image.open(synth_dir / rows[0]["file"]).size == (16, 16)
    base = json.loads(next((tmp_path / "runs" / "train_diffusion").glob("*/base.json")).read_text())
    assert base["backend"] == "sd"
    assert len(result.evaluations) == 1


def test_guided_methods_through_the_pipeline(tmp_path):
    """logex (DiG-IN) and fg-entropy share the base and LoRA; their sets differ from the unguided one."""
    overrides = [o for o in TINY if not o.startswith(("methods", "synthesis"))] + [
        "methods=[logex-lora,logex,fg-entropy]",
        "synthesis={n_per_class: 2, shard_size: 2, num_steps: 3, aux_method: ce, "
        "params: {logex: {max_opt_steps: 2, threshold: 0.99, batch_size: 2}, fg-entropy: {every: 1, num_steps: 4}}}"]
    result = run_experiment(load_experiment("demo", overrides), tmp_path / "runs", log=quiet)
    assert len(list((tmp_path / "runs" / "train_diffusion").glob("*/manifest.json"))) == 1
    assert len(list((tmp_path / "runs" / "adapt_lora").glob("*/manifest.json"))) == 1
    sets = {}
    for manifest in (tmp_path / "runs" / "synthesize").glob("*/manifest.json"):
        rows = list(csv.DictReader(open(manifest.parent / "synthetic.csv")))
        sets[rows[0]["method"]] = {r["file"]: float(r["score"]) for r in rows}
    assert set(sets) == {"lora", "logex", "fg-entropy"}
    # DiG-IN raises the auxiliary classifier's confidence over plain sampling from the same seeds
    assert np.mean(list(sets["logex"].values())) > np.mean(list(sets["lora"].values()))
    results = json.loads((result.report_dir / "results.json").read_text())
    assert set(results["methods"]) == {"logex-lora", "logex", "fg-entropy"}
    # each row's settings: LoGex's generators share the experiment's DDIM steps and CFG; FG-Entropy keeps its
    # own CFG 5 (official) unless its params set it (here only num_steps)
    settings = results["synthetic_sets"]["settings"]
    assert (settings["lora"]["DDIM steps"], settings["lora"]["CFG"]) == (3, 3.0)
    assert (settings["logex"]["DDIM steps"], settings["logex"]["CFG"]) == (3, 3.0)
    assert (settings["fg-entropy"]["DDIM steps"], settings["fg-entropy"]["CFG"]) == (4, 5.0)
    assert settings["fg-entropy"]["order"] == "official" and settings["logex"]["aux classifier"] == "ce"
    per_class = results["synthetic_sets"]["per_class"]["logex"]
    assert all(e["n"] == 2 and 0 <= e["accepted"] <= 1 for e in per_class.values())
    assert np.mean([e["mean_score"] for e in per_class.values()]) == pytest.approx(np.mean(list(sets["logex"].values())))
    assert set(results["oracle_accuracy"]) == {"real_tail_test", "lora", "logex", "fg-entropy"}
    assert "Synthetic image settings" in (result.report_dir / "report.md").read_text()
    # auxiliary vs oracle on the guided images, recomputed from the saved images and both classifiers
    import torch

    from tailsynth.engine.artifacts import load_classifier
    from tailsynth.training import predict
    runs = tmp_path / "runs"
    synth = next(m.parent for m in (runs / "synthesize").glob("*/manifest.json")
                 if json.loads(m.read_text())["config"]["method"] == "logex")
    split = Split.read(next((runs / "split").glob("*/split.csv")))
    images, labels = SyntheticSet.read(synth).load_images(split.class_names, 8, 1)
    aux_fp = json.loads((synth / "manifest.json").read_text())["inputs"]["aux"]["fingerprint"]
    aux_pred = predict(load_classifier(runs / "train_classifier" / aux_fp)[0], images, torch.device("cpu"))[0].argmax(1)
    oracle_pred = predict(load_classifier(next((runs / "train_oracle").glob("*/")))[0], images,
                          torch.device("cpu"))[0].argmax(1)
    q = results["oracle_accuracy"]["logex"]
    assert q["overall"] == pytest.approx(np.mean(oracle_pred == labels))
    assert q["aux_accuracy"] == pytest.approx(np.mean(aux_pred == labels))
    assert q["aux_right_oracle_wrong"] == pytest.approx(np.mean((aux_pred == labels) & (oracle_pred != labels)))
    assert q["agreement"] == pytest.approx(np.mean(aux_pred == oracle_pred))
    assert "aux right, oracle wrong" in (result.report_dir / "report.md").read_text()
    # the memorisation check, recomputed by brute force: nearest tail training image of the class, in the oracle's
    # features and in pixels, against the class's median leave-one-out real-real nearest distance
    from tailsynth.engine.artifacts import split_data
    train = split_data(split, load_experiment("demo", overrides).data, "train")
    tail = np.isin(train.labels, split.tail_classes)
    oracle = load_classifier(next((runs / "train_oracle").glob("*/")))[0]
    spaces = {"features": (predict(oracle, images, torch.device("cpu"))[1],
                           predict(oracle, train.images[tail], torch.device("cpu"))[1]),
              "pixels": (images.reshape(len(images), -1) / 255.0, train.images[tail].reshape(tail.sum(), -1) / 255.0)}
    for key, (syn, real) in spaces.items():
        near, real_y = [], train.labels[tail]
        for c in np.unique(labels):
            rc = real[real_y == c].astype(np.float64)
            rr = np.linalg.norm(rc[:, None] - rc[None], axis=2)
            np.fill_diagonal(rr, np.inf)
            d = np.linalg.norm(syn[labels == c][:, None] - rc[None], axis=2).min(1)
            near += list((d < np.median(rr.min(1))) | (d == 0))
        assert results["memorisation"]["logex"][key]["overall"]["near_copies"] == pytest.approx(np.mean(near))
    report_md = (result.report_dir / "report.md").read_text()
    assert "Synthetic image memorisation" in report_md and "near-copies, pixels" in report_md


def test_images_per_class_sweep_uses_prefixes_of_one_synthesis(tmp_path):
    """synthetic_sweep (LoGex Fig. 3): one synthesis for the largest count; each row trains on the first N
    images per class, and those are the images a smaller synthesis would have made."""
    run_experiment(load_experiment("demo", TINY), tmp_path / "a", log=quiet)
    cfg = load_experiment("demo", TINY + ["synthetic_sweep={logex-lora: [1, 5]}"])
    result = run_experiment(cfg, tmp_path / "b", log=quiet)
    synth_small = next(p for p in (tmp_path / "a" / "synthesize").iterdir() if not p.name.startswith("."))
    synth_big = next(p for p in (tmp_path / "b" / "synthesize").iterdir() if not p.name.startswith("."))
    rows_big = list(csv.DictReader(open(synth_big / "synthetic.csv")))
    rows_small = list(csv.DictReader(open(synth_small / "synthetic.csv")))
    classes = sorted({r["class"] for r in rows_big})
    assert len(rows_big) == 5 * len(classes) and len(rows_small) == 3 * len(classes)
    for name in classes:  # the first 3 of 5 per class are byte-identical to the 3-image synthesis
        big = [r["file"] for r in rows_big if r["class"] == name][:3]
        little = [r["file"] for r in rows_small if r["class"] == name]
        assert [(synth_big / f).read_bytes() for f in big] == [(synth_small / f).read_bytes() for f in little]
    split = Split.read(next((tmp_path / "b" / "split").glob("*/split.csv")))
    counts = {}
    for manifest in (tmp_path / "b" / "train_classifier").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        counts[m["config"]["label"] or m["config"]["method"]] = m["result"]["train_counts"]
    real = {c: split.counts()[split.class_names[c]]["train"] for c in split.tail_classes}
    for label, n in (("logex-lora", 3), ("logex-lora@1", 1), ("logex-lora@5", 5)):
        assert all(counts[label][c] == real[c] + n for c in split.tail_classes), label
    methods = [json.loads((p.path / "metrics.json").read_text())["method"] for p in result.evaluations]
    assert methods == ["logex-lora", "logex-lora@1", "logex-lora@5"]
    report = (result.report_dir / "report.md").read_text()
    section = report[report.index("Synthetic images per tail class: logex-lora"):]
    table_rows = [line for line in section.splitlines() if line.startswith("| ")][1:4]  # after the header row
    assert [line.split("|")[1].strip() for line in table_rows] == ["1", "3", "5"]
    assert "FPR@95 vs synthetic images per tail class" in (result.report_dir / "report.html").read_text()

    # the same sweep in the folder of the 3-image run copies that run's full shards (shard 0 of each class:
    # 2 images; shard 1 holds 1 image there but 2 here, so it is made anew) and ends with the same images
    run_experiment(cfg, tmp_path / "a", log=quiet)
    manifests = [json.loads(m.read_text()) for m in (tmp_path / "a" / "synthesize").glob("*/manifest.json")]
    grown = next(m for m in manifests if m["config"]["synthesis"]["n_per_class"] == 5)
    assert grown["result"]["reused_shards"] == len(classes)
    assert json.loads(next(synth_big.parent.glob("*/manifest.json")).read_text())["result"]["reused_shards"] == 0
    assert digest(tmp_path / "a" / "synthesize" / grown["fingerprint"]) == digest(synth_big)


def test_per_method_auxiliary_classifier(tmp_path):
    """synthesis.params.<method>.aux_method overrides synthesis.aux_method for that synthesis only."""
    overrides = [o for o in TINY if not o.startswith(("methods=", "synthesis="))] + [
        "methods=[logex-lora, logex]",
        "synthesis={n_per_class: 3, shard_size: 2, num_steps: 3, aux_method: ce, "
        "params: {logex: {aux_method: ce-rw, max_opt_steps: 1}}}"]
    result = run_experiment(load_experiment("demo", overrides), tmp_path / "runs", plan_only=True, log=quiet)
    aux = [p["label"] for p in result.plan if p["stage"] == "train_classifier" and "seed 0" in p["label"]]
    assert aux == ["ce seed 0", "logex-lora seed 0", "ce-rw seed 0", "logex seed 0"]


def test_aux_train_gives_the_guidance_its_own_classifier_and_lora_settings_keep_the_base(tmp_path):
    """synthesis.aux_train trains a separate auxiliary classifier (the row keeps its own), with those settings
    over the experiment's classifier; a bad key stops before any stage; a new LoRA setting reuses the base
    (its fingerprint leaves LoRA out) and only what depends on LoRA gets new fingerprints."""
    from tailsynth.errors import TailsynthError

    keep = [o for o in TINY if not o.startswith(("methods=", "synthesis="))]
    synth = "synthesis={n_per_class: 3, shard_size: 2, num_steps: 3, aux_method: ce, %s}"
    plan = lambda *o: run_experiment(load_experiment("demo", keep + list(o)), tmp_path / "runs",  # noqa: E731
                                     plan_only=True, log=quiet).plan
    shared = plan("methods=[ce, logex]", synth % "params: {logex: {max_opt_steps: 1}}")
    own = plan("methods=[ce, logex]", synth % "aux_train: {epochs: 3, selection: val_bacc}, "
                                              "params: {logex: {max_opt_steps: 1}}")
    labels = lambda p: [e["label"] for e in p if e["stage"] == "train_classifier"]  # noqa: E731
    assert labels(shared) == ["ce seed 0", "logex seed 0"]
    assert labels(own) == ["ce seed 0", "aux ce seed 0", "logex seed 0"]
    fp = lambda p, label: next(e["fingerprint"] for e in p if e["label"] == label)  # noqa: E731
    assert fp(own, "ce seed 0") == fp(shared, "ce seed 0") and fp(own, "aux ce seed 0") != fp(shared, "ce seed 0")
    with pytest.raises(TailsynthError, match="aux_train"):
        plan("methods=[logex]", synth % "aux_train: {epoch: 3}")
    ens = plan("methods=[ce, logex]", synth % "aux_ensemble: 3, aux_train: {epochs: 3}, params: {logex: {max_opt_steps: 1}}")
    assert labels(ens) == ["ce seed 0", "aux ce seed 0", "aux ce seed 1", "aux ce seed 2", "logex seed 0"]
    with pytest.raises(TailsynthError, match="aux_ensemble"):
        plan("methods=[logex]", synth % "aux_ensemble: 0")
    rank8 = plan("methods=[ce, logex]", synth % "params: {logex: {max_opt_steps: 1}}", "diffusion.lora.rank=8")
    assert fp(rank8, "base diffusion") == fp(shared, "base diffusion")
    assert fp(rank8, "LoRA on tail") != fp(shared, "LoRA on tail")


def test_sweep_of_a_method_not_run_adds_nothing(tmp_path):
    """`methods=[ce]` on a config that sweeps logex-lora runs CE only (no diffusion stage, no sweep row)."""
    overrides = [o for o in TINY if not o.startswith("methods=")] + ["methods=[ce]",
                                                                       "synthetic_sweep={logex-lora: [1, 5]}"]
    result = run_experiment(load_experiment("demo", overrides), tmp_path / "runs", plan_only=True, log=quiet)
    assert [p["label"] for p in result.plan] == ["digits-lt", "ce seed 0", "ce seed 0"]
    with_lora = run_experiment(load_experiment("demo", overrides[:-2] + ["methods=[logex-lora]",
                                                                        "synthetic_sweep={logex-lora: [1, 5]}"]),
                               tmp_path / "runs", plan_only=True, log=quiet)
    assert {"logex-lora@1 seed 0", "logex-lora@5 seed 0"} <= {p["label"] for p in with_lora.plan}


def test_centred_pixel_backend_takes_the_mean_of_its_training_images(tmp_path):
    cfg = load_experiment("demo", TINY + ["diffusion.pixel.data_mean=auto", "synthesis.n_per_class=2"])
    run_experiment(cfg, tmp_path / "runs", log=quiet)
    model = next((tmp_path / "runs" / "train_diffusion").glob("*/model/config.json"))
    mean = json.loads(model.read_text())["config"]["data_mean"]
    from tailsynth.engine.artifacts import split_data
    split = Split.read(next((tmp_path / "runs" / "split").glob("*/split.csv")))
    train = split_data(split, cfg.data, "train")
    head = train.images[np.isin(train.labels, split.head_classes)]
    assert len(mean) == 1 and abs(mean[0] - head.mean() / 255.0) < 1e-9
    synth_dir = next(p for p in (tmp_path / "runs" / "synthesize").iterdir() if not p.name.startswith("."))
    images, _ = SyntheticSet.read(synth_dir).load_images(split.class_names, cfg.data.image_size, cfg.data.channels)
    assert len(images) == 2 * len(split.tail_classes)


def test_dig_in_realism_term_through_the_pipeline(tmp_path):
    """synthesis.params.logex.realism_weight > 0: the generator builds the auxiliary's class prototypes from the real
    training images of the tail classes (zero rows for the head), and its images differ from the weight-0 set made
    from the same base, LoRA, auxiliary and x_T."""
    import torch
    from tailsynth.engine import Artifact
    from tailsynth.engine.artifacts import images_of, read_split
    from tailsynth.methods.registry import generator_named
    from tailsynth.pipeline.diffusion_stages import aux_guide

    def overrides(weight):
        return [o for o in TINY if not o.startswith(("methods", "synthesis"))] + [
            "methods=[logex]", "synthesis={n_per_class: 2, shard_size: 2, num_steps: 3, aux_method: ce, params: "
            f"{{logex: {{max_opt_steps: 2, threshold: 0.99, batch_size: 2, realism_weight: {weight}}}}}}}"]

    runs = tmp_path / "runs"
    for weight in (0.0, 5.0):
        run_experiment(load_experiment("demo", overrides(weight)), runs, log=quiet)
    made = {json.loads(m.read_text())["config"]["synthesis"]["params"]["logex"]["realism_weight"]: m.parent
            for m in (runs / "synthesize").glob("*/manifest.json")}
    assert set(made) == {0.0, 5.0}
    assert digest(made[0.0]).keys() == digest(made[5.0]).keys() and digest(made[0.0]) != digest(made[5.0])
    cfg = load_experiment("demo", overrides(5.0))
    split_dir = next((runs / "split").glob("*/manifest.json")).parent
    aux_dir = next(m.parent for m in (runs / "train_classifier").glob("*/manifest.json")
                   if json.loads(m.read_text())["config"].get("method") == "ce")
    guide = aux_guide([aux_dir], torch.device("cpu"), cfg.synthesis.guide_resize)

    art = Artifact("split", split_dir.name, split_dir)
    gen = generator_named("logex")
    proto = gen.prepare({"split": art}, None, torch.device("cpu"), gen.params(cfg.synthesis), guide=guide,
                        data=cfg.data)
    split = read_split(art)
    tail = list(split.tail_classes)
    images, positions = images_of(split, cfg.data, tail)
    c = tail[0]
    x = torch.as_tensor(images[positions == 0]).permute(0, 3, 1, 2).float().div(255.0)
    assert torch.allclose(proto[0, c], guide.member_features(x)[0].mean(0), atol=1e-5)
    head = [k for k in range(len(split.class_names)) if k not in tail]
    assert torch.equal(proto[:, head], torch.zeros_like(proto[:, head]))
    assert gen.prepare({}, None, None, gen.params(load_experiment("demo", overrides(0.0)).synthesis)) is None
