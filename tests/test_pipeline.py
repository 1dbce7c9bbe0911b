"""End to end on a tiny benchmark: split -> classifiers -> scores -> report; caching; no test-set leakage."""
import json
import re

import numpy as np
import pytest

from tailsynth.errors import TailsynthError
from tailsynth.pipeline import ArtifactStore, Runner
from tailsynth.pipeline import stages
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import machine_description, run_experiment

from tiny import benchmark_data_mark, quiet, tiny

TINY = tiny("classifier.epochs=2", "methods=[ce,crt,ldam-rw-drw]", generator=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILSYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TAILSYNTH_PROGRESS", "0")


@pytest.mark.slow
def test_tiny_experiment_end_to_end_and_cached_rerun(tmp_path, cache):
    cfg = load_experiment("demo", TINY)
    result = run_experiment(cfg, tmp_path / "runs", log=quiet, command="test")
    assert len(result.evaluations) == 3
    for art in result.evaluations:
        metrics = json.loads((art.path / "metrics.json").read_text())
        for key in ("fpr95", "auroc", "bacc_head", "bacc_tail", "acc"):
            assert 0.0 <= metrics["metrics"][key] <= 1.0
        assert set(metrics["scores"]) >= {"p_tail", "msp_head", "energy_head", "maha_head", "rmaha"}
        scores = np.load(art.path / "scores.npz")
        assert scores["p_tail"].shape == scores["labels"].shape
    report = result.report_dir
    results = json.loads((report / "results.json").read_text())
    assert set(results["methods"]) == {"ce", "crt", "ldam-rw-drw"}
    assert results["methods"]["ce"]["fpr95"]["values"] == [
        json.loads((result.evaluations[0].path / "metrics.json").read_text())["metrics"]["fpr95"]]
    assert (report / "report.html").stat().st_size > 1000
    # crt reused the ce classifier as its base: 3 trainings for ce, crt, ldam (ce not trained twice)
    trained = [p for p in (tmp_path / "runs" / "train_classifier").iterdir() if not p.name.startswith(".")]
    assert len(trained) == 3
    from tailsynth.engine.machine import machine_key
    assert results["meta"]["machine_keys"] == [machine_key()]  # every stage built here, by this process
    from tailsynth.provenance import code_commit
    assert results["meta"].get("code_commit") == code_commit()  # the commit that made it (absent outside git)
    split = next((tmp_path / "runs" / "split").glob("*/manifest.json"))
    assert results["meta"]["split_fingerprint"] == split.parent.name
    manifest = json.loads(split.read_text())  # as if the split had been built on another kind of CPU
    manifest["machine_key"] = "Other CPU | AVX512 | torch 0 | 1 threads"
    split.write_text(json.dumps(manifest))

    logs = []
    again = run_experiment(cfg, tmp_path / "runs", log=logs.append, command="test", results_dir=tmp_path / "out")
    assert all(line.startswith("[cached]") for line in logs)
    assert [a.path for a in again.evaluations] == [a.path for a in result.evaluations]
    for name in ("report.md", "results.json", "report.html"):  # --results-dir: copied under the report's lock
        assert (tmp_path / "out" / name).read_bytes() == (report / name).read_bytes()
    assert "this report mixes stages built on 2 machine kinds" in (report / "report.md").read_text()

    plan = run_experiment(cfg, tmp_path / "runs", plan_only=True, log=quiet).plan
    assert {row["state"] for row in plan} == {"cached"}
    assert len(plan) == 1 + 3 + 3  # split, three trainings, three evaluations


def test_training_never_reads_the_test_split(tmp_path, cache, monkeypatch):
    seen = []
    original = stages.split_data

    def guarded(split, data, which):
        seen.append(which)
        if which == "test":
            raise AssertionError("the training stage read the test split")
        return original(split, data, which)

    monkeypatch.setattr(stages, "split_data", guarded)
    cfg = load_experiment("demo", TINY)
    from tailsynth.data import index_source, load_benchmark_config
    bench = load_benchmark_config("digits-lt")
    runner = Runner(ArtifactStore(tmp_path / "runs"), log=quiet)
    split = runner.run(stages.SPLIT, stages.SplitStageConfig(
        benchmark=bench, seed=0, source_fingerprint=index_source(bench.source).fingerprint))
    runner.run(stages.TRAIN, stages.TrainStageConfig(method="ce", seed=0, data=cfg.data, train=cfg.classifier),
               {"split": split})
    assert set(seen) == {"train", "val"}


def test_bad_experiment_config_names_the_key(tmp_path):
    with pytest.raises(TailsynthError, match="classifier.epochz"):
        load_experiment("demo", ["classifier.epochz=3"])
    with pytest.raises(TailsynthError, match="classifier.epochs"):
        load_experiment("demo", ["classifier.epochs=many"])
    with pytest.raises(TailsynthError, match="unknown method 'cee'.*ldam-rw-drw"):
        run_experiment(load_experiment("demo", ["methods=[cee]"]), tmp_path, plan_only=True, log=quiet)


@pytest.mark.parametrize("override, key, value", [
    ("classifier.epochs=-3", "classifier.epochs", "-3"),
    ("synthesis.n_per_class=0", "synthesis.n_per_class", "0"),
])
def test_bad_counts_fail_at_load_and_plan_naming_key_value_and_range(tmp_path, override, key, value):
    message = rf"key '{re.escape(key)}' = {value}: Input should be greater than or equal to 1"
    with pytest.raises(TailsynthError, match=message):
        load_experiment("demo", [override])
    from click.testing import CliRunner

    from tailsynth.cli import cli
    result = CliRunner().invoke(cli, ["run", "demo", "--plan", "--runs", str(tmp_path / "runs"), override])
    assert isinstance(result.exception, TailsynthError) and re.search(message, str(result.exception))
    assert not (tmp_path / "runs").exists()  # nothing planned, nothing made


def test_machine_description_names_cpu_kernels_cores_and_torch():
    """results.json says where numbers were measured, including the vector ISA: AVX2 and AVX-512 kernels round
    differently, and so do different thread counts, so CPU runs are bit-identical only on the same kind of CPU with
    the same number of torch threads."""
    import os

    import torch
    text = machine_description()
    assert (f"{os.cpu_count()} CPU cores ({torch.backends.cpu.get_cpu_capability()} kernels, "
            f"{torch.get_num_threads()} torch threads)") in text
    assert f"torch {torch.__version__}" in text and ("no GPU" in text) != torch.cuda.is_available()


@pytest.mark.parametrize("name,stages_min", [
    pytest.param(name, n, marks=[m for m in [benchmark_data_mark(name)] if m is not None])
    for name, n in [("demo", 10), ("pbc-lt-cpu", 100), ("cifar10-lt-cpu", 20), ("cifar100-lt-cpu", 10),
                    ("cifar10-tail6-cpu", 20), ("pbc-lt-cpu-long", 20), ("fashion-mnist-lt-cpu", 20)]])
def test_every_cpu_experiment_config_loads_and_plans(tmp_path, name, stages_min):
    """A shipped experiment config is valid as a whole (keys, method params, auxiliary settings) and plans its
    stages without running any; ``pbc-lt-paper`` needs weights on disk and is checked in test_pretrained."""
    result = run_experiment(load_experiment(name, []), tmp_path / "runs", plan_only=True, log=quiet)
    assert len(result.plan) >= stages_min and all(row["state"] == "to run" for row in result.plan)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))


def test_report_lock_makes_a_second_run_wait(tmp_path):
    """Two runs of one experiment in one runs folder merge their rows into one report: the second waits for the
    first's read-merge-write-copy instead of interleaving with it (which lost rows and copied the other's)."""
    import threading
    import time

    from tailsynth.pipeline.experiment_run import report_lock

    entered = threading.Event()

    def second():
        with report_lock(tmp_path / "reports" / "x"):
            entered.set()

    with report_lock(tmp_path / "reports" / "x"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        assert not entered.is_set()
    t.join(5)
    assert entered.is_set()


def test_extends_merges_a_profile_over_its_parent(tmp_path):
    """`extends:` = the parent's mapping with the child's keys over it: nested mappings key by key, lists and
    values replaced, `{}` clears. pbc-lt-cpu-long is pbc-lt-cpu with exactly its generator/auxiliary/row changes."""
    from tailsynth.config import to_dict

    parent, child = to_dict(load_experiment("pbc-lt-cpu")), to_dict(load_experiment("pbc-lt-cpu-long"))
    assert child["diffusion"]["pixel"]["block_out_channels"] == [64, 128, 128]
    assert child["diffusion"]["base"]["steps"] == 3000
    assert child["synthesis"]["params"]["logex"]["checkpoint"] is True
    assert (child["synthesis"]["n_per_class"], child["classifier"]["epochs"]) == (200, 20)
    rows = ["ce", "logex-lora", "logex", "logex-guarded"]
    assert child["classifier"]["lr"] == parent["classifier"]["lr"] and child["methods"] == rows
    assert child["synthetic_sweep"] == {}
    expected = json.loads(json.dumps(parent))
    expected.update(name="pbc-lt-cpu-long", profile="cpu-long", methods=rows, synthetic_sweep={})
    expected["diffusion"]["pixel"]["block_out_channels"] = [64, 128, 128]
    expected["diffusion"]["base"]["steps"] = 3000
    expected["synthesis"]["params"]["logex"]["checkpoint"] = True
    expected["synthesis"]["aux_train"] = {"epochs": 15, "selection": "val_bacc"}
    expected["synthesis"]["n_per_class"] = 200
    expected["classifier"]["epochs"] = 20
    expected["method_params"]["logex-guarded"] = {"min_gain": 0.05, "replace": "drop", "fallback_below": 0.0}
    assert child == expected
    # a user's file extends a shipped config, a command-line override still wins, a cycle is named
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: demo\nname: mine\nseeds: [5]\nclassifier: {epochs: 1}\n")
    cfg = load_experiment(str(mine), ["classifier.lr=0.5"])
    demo = load_experiment("demo")
    assert (cfg.name, cfg.seeds, cfg.classifier.epochs, cfg.classifier.lr) == ("mine", [5], 1, 0.5)
    assert cfg.classifier.batch_size == demo.classifier.batch_size and cfg.methods == demo.methods
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(TailsynthError, match="cycle"):
        load_experiment(str(tmp_path / "a.yaml"))


def test_threads_pins_torch_threads_for_the_run_only(tmp_path, monkeypatch):
    import torch

    from tailsynth.config import to_dict
    from tailsynth.pipeline import experiment_run
    seen = []
    real_check = experiment_run.check_experiment

    def spy(cfg):
        seen.append(torch.get_num_threads())
        return real_check(cfg)

    monkeypatch.setattr(experiment_run, "check_experiment", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run_experiment(load_experiment("demo", ["threads=1"]), tmp_path / "a", plan_only=True, log=quiet)
        assert seen == [1] and torch.get_num_threads() == 3
        run_experiment(load_experiment("demo", ["threads=null"]), tmp_path / "b", plan_only=True, log=quiet)
        assert seen == [1, 3]

        def broken(cfg):  # a run that fails still gives the caller its thread count back
            raise TailsynthError("stop")

        monkeypatch.setattr(experiment_run, "check_experiment", broken)
        with pytest.raises(TailsynthError):
            run_experiment(load_experiment("demo", ["threads=2"]), tmp_path / "c", plan_only=True, log=quiet)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    # unset, the key stays out of the dump (stage fingerprints and table digests made before it existed hold)
    assert "threads" not in to_dict(load_experiment("demo", ["threads=null"]))
    with pytest.raises(TailsynthError, match="threads"):
        load_experiment("demo", ["threads=0"])
