"""The staged runner: skip, force, fingerprints, atomic artifacts, resume after SIGKILL."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tailsynth.config import StrictConfig
from tailsynth.errors import TailsynthError
from tailsynth.pipeline import ArtifactStore, Runner, Stage


class CountCfg(StrictConfig):
    value: int


CALLS: list[int] = []


def count_stage(cfg, inputs, workdir: Path):
    CALLS.append(cfg.value)
    base = int((inputs["up"].path / "out.txt").read_text()) if "up" in inputs else 0
    (workdir / "out.txt").write_text(str(base + cfg.value))
    return {"sum": base + cfg.value}


STAGE_A = Stage("a", "1", count_stage)
STAGE_B = Stage("b", "1", count_stage)


def quiet(_msg):
    pass


def test_skip_force_and_fingerprints(tmp_path):
    CALLS.clear()
    runner = Runner(ArtifactStore(tmp_path), log=quiet)
    a = runner.run(STAGE_A, CountCfg(value=2))
    b = runner.run(STAGE_B, CountCfg(value=3), {"up": a})
    assert (b.path / "out.txt").read_text() == "5"
    assert CALLS == [2, 3]
    manifest = json.loads((b.path / "manifest.json").read_text())
    assert manifest["config"] == {"value": 3}
    assert manifest["inputs"]["up"]["fingerprint"] == a.fingerprint
    assert manifest["result"] == {"sum": 5}

    # rerun: both cached
    runner2 = Runner(ArtifactStore(tmp_path), log=quiet)
    assert runner2.run(STAGE_A, CountCfg(value=2)).fingerprint == a.fingerprint
    runner2.run(STAGE_B, CountCfg(value=3), {"up": a})
    assert CALLS == [2, 3]

    # a different config is a different artifact; a different version too
    c = runner2.run(STAGE_A, CountCfg(value=4))
    assert c.fingerprint != a.fingerprint
    assert Runner(ArtifactStore(tmp_path), log=quiet).fingerprint(Stage("a", "2", count_stage), CountCfg(value=2), {}) != a.fingerprint

    # force recomputes exactly once per runner
    runner3 = Runner(ArtifactStore(tmp_path), force={"a"}, log=quiet)
    a3 = runner3.run(STAGE_A, CountCfg(value=2))
    runner3.run(STAGE_A, CountCfg(value=2))
    assert CALLS == [2, 3, 4, 2]
    # ... and whatever was built from the old output is rebuilt too, once
    runner3.run(STAGE_B, CountCfg(value=3), {"up": a3})
    runner3.run(STAGE_B, CountCfg(value=3), {"up": a3})
    assert CALLS == [2, 3, 4, 2, 3]


def test_done_line_reports_the_result_scalars(tmp_path):
    """One line per finished stage: its wall time and the first four scalars of its result (dicts skipped)."""
    def summary_stage(cfg, inputs, workdir):
        return {"counts": {"a": 1}, "best_epoch": 9, "best_score": 0.712345, "flag": True, "name": "x",
                "loss": 1.5e-5, "more": 3}
    logs: list[str] = []
    Runner(ArtifactStore(tmp_path), log=logs.append).run(Stage("s", "1", summary_stage), CountCfg(value=1))
    assert logs[0].startswith("[run] s/")
    assert re.fullmatch(r"\[done\] s/\w+ in \d+\.\ds: best_epoch 9, best_score 0\.7123, name x, loss 1\.5e-05",
                        logs[1]), logs[1]
    logs.clear()
    Runner(ArtifactStore(tmp_path), log=logs.append).run(STAGE_A, CountCfg(value=7))
    assert logs[1].endswith(": sum 7")


def test_failed_stage_leaves_no_complete_artifact(tmp_path):
    def boom(cfg, inputs, workdir):
        (workdir / "half.txt").write_text("x")
        raise RuntimeError("crash")

    stage = Stage("boom", "1", boom)
    runner = Runner(ArtifactStore(tmp_path), log=quiet)
    with pytest.raises(RuntimeError):
        runner.run(stage, CountCfg(value=1))
    fp = runner.fingerprint(stage, CountCfg(value=1), {})
    assert runner.store.lookup("boom", fp) is None
    assert (tmp_path / "boom" / f"{fp}.partial" / "half.txt").exists()
    rows = runner.store.list()
    assert [r["state"] for r in rows] == ["partial"]


def test_interrupted_time_counts_once_resumed_and_timings_list_each_artifact_once(tmp_path):
    """A stage stopped by an error/Ctrl-C keeps its elapsed time; the finished manifest's wall_time_s adds the
    resumed invocation to it; the report's stage table shows one row per artifact."""
    from tailsynth.report.tables import timings_table

    attempts = []

    def slow_then_fine(cfg, inputs, workdir):
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(0.3)
            raise KeyboardInterrupt
        return {"ok": True}

    stage = Stage("slow", "1", slow_then_fine)
    with pytest.raises(KeyboardInterrupt):
        Runner(ArtifactStore(tmp_path), log=quiet).run(stage, CountCfg(value=1))
    runner = Runner(ArtifactStore(tmp_path), log=quiet)
    art = runner.run(stage, CountCfg(value=1))
    manifest = json.loads((art.path / "manifest.json").read_text())
    earlier = manifest["wall_time_s"] - manifest["wall_time_this_run_s"]
    assert manifest["resumed"] is True and earlier >= 0.3 and not (art.path / "elapsed.json").exists()
    runner.run(stage, CountCfg(value=1))  # cached: a second timing row for the same artifact
    assert [t["state"] for t in runner.timings] == ["resumed", "cached"]
    table = timings_table({"timings": runner.timings})
    assert len(table.rows) == 1 and table.rows[0][2][0] == "resumed"


def test_manifest_records_the_peak_memory_of_each_stage(tmp_path):
    """peak_rss_bytes: the peak of the stage itself (the kernel's peak is reset when it starts), so a stage that holds
    400 MB records at least that and the next, small stage records less; an interrupted invocation's peak counts."""
    from tailsynth.engine.memory import PeakRss, _status_bytes

    def big(cfg, inputs, workdir):
        block = bytearray(400 << 20)  # zero pages are not resident until written
        block[::4096] = b"x" * len(block[::4096])
        if cfg.value == 2 and not (workdir / "tried").exists():
            (workdir / "tried").write_text("")
            raise KeyboardInterrupt
        return {}

    def small(cfg, inputs, workdir):
        return {}

    runner = Runner(ArtifactStore(tmp_path), log=quiet)
    high = json.loads((runner.run(Stage("big", "1", big), CountCfg(value=1)).path / "manifest.json").read_text())
    low = json.loads((runner.run(Stage("small", "1", small), CountCfg(value=1)).path / "manifest.json").read_text())
    assert high["peak_rss_scope"] == low["peak_rss_scope"] == "stage"  # Linux: the per-stage reset works here
    assert high["peak_rss_bytes"] >= (400 << 20) and low["peak_rss_bytes"] < high["peak_rss_bytes"] - (300 << 20)
    assert low["peak_rss_bytes"] >= _status_bytes("VmRSS") - (64 << 20)  # at least what the process holds
    assert [t["peak_rss_bytes"] for t in runner.timings] == [high["peak_rss_bytes"], low["peak_rss_bytes"]]
    with pytest.raises(KeyboardInterrupt):
        runner.run(Stage("big", "1", big), CountCfg(value=2))
    elapsed = json.loads(next(tmp_path.glob("big/*.partial/elapsed.json")).read_text())
    assert elapsed["peak_rss_bytes"] >= (400 << 20)
    resumed = runner.run(Stage("big", "1", big), CountCfg(value=2))
    assert json.loads((resumed.path / "manifest.json").read_text())["peak_rss_bytes"] >= elapsed["peak_rss_bytes"]
    with PeakRss() as peak:
        pass
    assert peak.bytes is not None and peak.bytes > 0


@pytest.mark.e2e
def test_sigkill_mid_stage_then_rerun_resumes(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from tailsynth.pipeline import ArtifactStore, Runner, Stage
        from test_runner import CountCfg

        def slow(cfg, inputs, workdir):
            step = int((workdir / "ckpt").read_text()) if (workdir / "ckpt").exists() else 0
            while step < 6:
                step += 1
                (workdir / "ckpt").write_text(str(step))
                time.sleep(0.3)
            (workdir / "out.txt").write_text("done")
            return {{"steps": step}}

        Runner(ArtifactStore({str(tmp_path)!r}), log=print).run(Stage("slow", "1", slow), CountCfg(value=1))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    partial = list(tmp_path.glob("slow/*.partial"))
    deadline = time.time() + 60
    while time.time() < deadline:
        partial = list(tmp_path.glob("slow/*.partial"))
        if partial and (partial[0] / "ckpt").exists() and int((partial[0] / "ckpt").read_text() or 0) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial, "the stage never started"
    assert not [p for p in (tmp_path / "slow").iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    killed_at = int((partial[0] / "ckpt").read_text())
    assert 2 <= killed_at < 6

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[resume]" in proc.stdout
    store = ArtifactStore(tmp_path)
    rows = store.list()
    assert [r["state"] for r in rows] == ["complete"]
    manifest = json.loads((Path(rows[0]["path"]) / "manifest.json").read_text())
    assert manifest["resumed"] is True and manifest["result"] == {"steps": 6}


def test_disk_full_keeps_previous_file_and_names_path(tmp_path, monkeypatch):
    import errno
    import tailsynth.utils as utils

    target = tmp_path / "metrics.json"
    utils.atomic_write_json(target, {"v": 1})

    def full(fd, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", full)
    with pytest.raises(TailsynthError, match="metrics.json.*No space left"):
        utils.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind
