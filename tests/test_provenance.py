"""Which code made a result: the checkout's commit (reports record it) and a file's last commit (the backfill)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tailsynth.provenance import code_commit, last_commit_of

ROOT = Path(__file__).resolve().parent.parent
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@needs_git
def test_code_commit_is_the_checkouts_head():
    try:
        head = git(ROOT, "rev-parse", "--short=10", "HEAD")
    except subprocess.CalledProcessError:
        pytest.skip("the tests do not run from a git checkout")
    found = code_commit()
    assert found is not None and found.split("+")[0] == head
    assert found.endswith("+dirty") == bool(git(ROOT, "status", "--porcelain", "--untracked-files=no", "--",
                                                "src/tailsynth"))


@needs_git
def test_last_commit_of_a_file_and_the_backfill(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results" / "old").mkdir(parents=True)
    (repo / "results" / "new").mkdir()
    (repo / "results" / "old" / "results.json").write_text(json.dumps({"methods": {}, "meta": {}}))
    (repo / "results" / "new" / "results.json").write_text(json.dumps({"methods": {}, "meta": {"code_commit": "x"}}))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    first = git(repo, "log", "-1", "--format=%h %cs", "--abbrev=10")
    (repo / "other.txt").write_text("later")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "second")  # does not touch results.json: its last commit stays the first
    git(repo, "mv", "results/old", "results/moved")
    git(repo, "commit", "-q", "-m", "a move is not a change of content")
    git(repo, "mv", "results/moved", "results/old")
    git(repo, "commit", "-q", "-m", "moved back")
    commit, date = first.split()
    assert last_commit_of(repo / "results" / "old" / "results.json") == (commit, date)
    assert last_commit_of(repo / "untracked.json") is None
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mark_provenance.py"), str(repo / "results")],
                          capture_output=True, text=True, check=True)
    assert f"old: {commit} ({date})" in done.stdout and "new" not in done.stdout
    assert json.loads((repo / "results" / "old" / "results.json").read_text())["meta"]["results_commit"] == (
        f"{commit} ({date})")
    assert json.loads((repo / "results" / "new" / "results.json").read_text())["meta"] == {"code_commit": "x"}
