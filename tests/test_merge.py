"""Machine provenance (every manifest records the machine that built it; a report names its machine kinds) and
``tailsynth report --merge`` (one table from several runs; refuses rows made with other settings, on another split
or on another machine kind). Fast: hand-made result files, no training."""
import json

import pytest
import torch
from click.testing import CliRunner

from tailsynth.config import StrictConfig
from tailsynth.engine import ArtifactStore, Runner, Stage
from tailsynth.engine.machine import UNKNOWN, machine_key, short_machine_key, stage_machine_keys
from tailsynth.errors import TailsynthError
from tailsynth.report import write_report
from tailsynth.report.merge import merge_report_files
from tailsynth.utils import stable_hash

from test_report import TABLE, write_run

KEY = "AMD EPYC | AVX2 | torch 2.13.0+cpu | 1 threads"
OTHER = "Other CPU | AVX512 | torch 2.13.0+cpu | 1 threads"  # no machine the tests run on
SETTINGS = {"benchmark": "digits-lt", "classifier": {"epochs": 1, "width": 0.125}, "split_seed": 0}


class ValueCfg(StrictConfig):
    value: int


def write_value(cfg, inputs, workdir):
    (workdir / "out.txt").write_text(str(cfg.value))
    return {"value": cfg.value}


STAGE_A, STAGE_B = Stage("a", "1", write_value), Stage("b", "1", write_value)


def quiet(_msg):
    pass


def test_manifest_records_the_machine_that_built_it(tmp_path):
    art = Runner(ArtifactStore(tmp_path), log=quiet).run(STAGE_A, ValueCfg(value=1))
    manifest = json.loads((art.path / "manifest.json").read_text())
    machine = manifest["machine"]
    assert set(machine) == {"cpu", "isa", "torch", "threads", "gpu"}
    assert machine["isa"] == torch.backends.cpu.get_cpu_capability() and machine["torch"] == torch.__version__
    assert machine["threads"] == torch.get_num_threads() and machine["cpu"]
    assert manifest["machine_key"] == (f"{machine['cpu']} | {machine['isa']} | torch {machine['torch']} | "
                                       f"{machine['threads']} threads") == machine_key()
    assert manifest["machine_key"].startswith(short_machine_key() + " | ")  # the golden file's key, plus threads
    assert manifest["resumed_machine_keys"] == []


def test_a_stage_resumed_on_another_machine_lists_both(tmp_path):
    store = ArtifactStore(tmp_path)
    runner = Runner(store, log=quiet)
    fp = runner.fingerprint(STAGE_A, ValueCfg(value=1), {})
    partial = store.partial_dir("a", fp)
    partial.mkdir(parents=True)  # what an interrupted invocation on another machine left behind
    (partial / "elapsed.json").write_text(json.dumps({"wall_time_s": 1.0, "machine_keys": [OTHER]}))
    art = runner.run(STAGE_A, ValueCfg(value=1), label="ce seed 0")
    assert art.manifest["resumed"] and art.manifest["resumed_machine_keys"] == [OTHER]
    keys = stage_machine_keys([(art, "ce seed 0")])
    assert keys == {machine_key(): [f"a/{fp[:8]} (ce seed 0)"], OTHER: [f"a/{fp[:8]} (ce seed 0)"]}


def test_a_report_whose_stages_carry_two_machine_keys_says_so(tmp_path):
    runner = Runner(ArtifactStore(tmp_path / "runs"), log=quiet)
    a = runner.run(STAGE_A, ValueCfg(value=1), label="split")
    b = runner.run(STAGE_B, ValueCfg(value=2), {"up": a}, label="ce seed 0")
    # the upstream stage was cached from a run on another CPU kind, the other from before keys were recorded
    manifest = a.manifest
    manifest["machine_key"] = OTHER
    (a.path / "manifest.json").write_text(json.dumps(manifest))
    keys = stage_machine_keys([(b, "ce seed 0")])  # a: found through b's inputs
    assert keys == {machine_key(): [f"b/{b.fingerprint[:8]} (ce seed 0)"], OTHER: [f"a/{a.fingerprint[:8]} (split)"]}
    del manifest["machine_key"]
    (a.path / "manifest.json").write_text(json.dumps(manifest))
    assert list(stage_machine_keys([(b, "")])) == [machine_key(), UNKNOWN]

    keys = {KEY: ["evaluate/1234abcd (ce seed 0)"], OTHER: ["split/99999999 (digits-lt)"]}
    out = tmp_path / "report"
    write_report([write_run(tmp_path, "ce", 0, TABLE["ce"][0])], out,
                 meta={"machine_keys": list(keys), "machine_key_stages": keys})
    md = (out / "report.md").read_text()
    header = md.split("## Tail detection")[0]
    assert "this report mixes stages built on 2 machine kinds" in header
    assert f"{KEY} (1 stage: evaluate/1234abcd (ce seed 0))" in header and f"{OTHER} (1 stage: split/99999999" in header
    assert "mixes stages built on 2 machine kinds" in (out / "report.html").read_text()
    assert json.loads((out / "results.json").read_text())["meta"]["machine_keys"] == [KEY, OTHER]

    single = tmp_path / "single"
    write_report([write_run(tmp_path / "s", "ce", 0, TABLE["ce"][0])], single, meta={"machine_keys": [KEY]})
    header = (single / "report.md").read_text().split("## Tail detection")[0]
    assert f"one machine kind: {KEY}" in header and "WARNING" not in header


def make_report(root, methods, *, settings=SETTINGS, split="split0123456789ab", keys=(KEY,), seed_offset=0.0):
    """A report folder as an experiment run writes it, with rows ``methods`` (hand-made evaluation files)."""
    runs = []
    for method in methods:
        for seed, (fpr, auc, bh, bt) in TABLE[method].items():
            runs.append(write_run(root / "evals", method, seed, (fpr + seed_offset, auc, bh, bt)))
    digest = stable_hash(settings)
    meta = {"experiment": "demo", "machine_keys": list(keys), "split_fingerprint": split, "settings": settings}
    write_report(runs, root / "report", meta=meta, config_digest={m: digest for m in methods})
    return root / "report"


def test_merge_of_two_compatible_runs_is_the_union_of_methods(tmp_path):
    a = make_report(tmp_path / "a", ["ce", "hod"])
    b = make_report(tmp_path / "b", ["ldam"])
    md, html, js = merge_report_files([a, b / "results.json"], tmp_path / "out", command="tailsynth report --merge")
    results = json.loads(js.read_text())
    assert list(results["methods"]) == ["ce", "hod", "ldam"]
    assert results["methods"]["ldam"] == json.loads((b / "results.json").read_text())["methods"]["ldam"]
    assert results["meta"]["machine_keys"] == [KEY] and results["meta"]["split_fingerprint"] == "split0123456789ab"
    assert results["meta"]["merged_from"] == [str(a / "results.json"), str(b / "results.json")]
    text = md.read_text()
    assert all(f"| {m} |" in text for m in ("ce", "hod", "ldam")) and "tailsynth report --merge" in text
    assert "WARNING" not in text.split("## Run")[0] and html.stat().st_size > 1000


def test_a_method_in_two_inputs_needs_prefer_last(tmp_path):
    a = make_report(tmp_path / "a", ["ce", "hod"])
    b = make_report(tmp_path / "b", ["ce"], seed_offset=0.01)
    with pytest.raises(TailsynthError, match=r"'ce' in .*a/report.*b/report.*--prefer-last"):
        merge_report_files([a, b], tmp_path / "out")
    _, _, js = merge_report_files([a, b], tmp_path / "out", prefer_last=True)
    results = json.loads(js.read_text())
    assert list(results["methods"]) == ["ce", "hod"]
    assert results["methods"]["ce"]["fpr95"]["values"][0] == pytest.approx(TABLE["ce"][0][0] + 0.01)


def test_merge_refuses_other_settings_naming_the_setting(tmp_path):
    a = make_report(tmp_path / "a", ["ce"])
    b = make_report(tmp_path / "b", ["hod"], settings={**SETTINGS, "classifier": {"epochs": 5, "width": 0.125}})
    with pytest.raises(TailsynthError, match=r"other non-method settings.*classifier\.epochs = 1 in .*a/report"
                                             r".*, 5 in .*b/report") as err:
        merge_report_files([a, b], tmp_path / "out")
    assert "width" not in str(err.value) and not (tmp_path / "out").exists()


def test_merge_refuses_another_split_or_machine_kind(tmp_path):
    a = make_report(tmp_path / "a", ["ce"])
    b = make_report(tmp_path / "b", ["hod"], split="othersplit000000")
    with pytest.raises(TailsynthError, match="different splits.*split0123456789ab in .*, othersplit000000 in"):
        merge_report_files([a, b], tmp_path / "out")
    c = make_report(tmp_path / "c", ["hod"], keys=(OTHER,))
    with pytest.raises(TailsynthError, match=r"2 machine kinds.*AVX2 .*; .*AVX512 "):
        merge_report_files([a, c], tmp_path / "out")


def test_report_merge_command(tmp_path):
    from tailsynth.cli import cli
    a = make_report(tmp_path / "a", ["ce"])
    b = make_report(tmp_path / "b", ["hod"])
    out = CliRunner().invoke(cli, ["report", "--merge", str(a), str(b), "--out", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    assert "2 method(s) (ce, hod)" in out.output
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())["methods"]) == {"ce", "hod"}
    refused = CliRunner().invoke(cli, ["report", "--merge", str(a), str(a), "--out", str(tmp_path / "o2")])
    assert isinstance(refused.exception, TailsynthError) and "--prefer-last" in str(refused.exception)


def test_settings_digest_leaves_out_threads_and_method_lists():
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import settings_digest
    base = settings_digest(load_experiment("demo", ["threads=1"]))
    assert settings_digest(load_experiment("demo", ["threads=2", "jobs=2", "methods=[ce]", "seeds=[0,1]"])) == base
    assert settings_digest(load_experiment("demo", ["threads=1", "classifier.epochs=7"])) != base
