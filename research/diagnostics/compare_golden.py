"""Before/after figures of the tiny test experiment from two golden files (tests/golden/tiny.json versions),
each a path or a git ``REV:path`` (read with ``git show``):

    python research/diagnostics/compare_golden.py e88a31a:tests/golden/tiny.json tests/golden/tiny.json

Prints, per row, FPR@95 / bAcc-head of P(tail) and the AUROC of maha_head and rmaha, before -> after, and
whether each synthetic set's images changed (entries of the machine both files share)."""
import json
import subprocess
import sys
from pathlib import Path


def read_golden(spec: str) -> dict:
    """A golden file from a path, or from ``REV:path`` in this repository's history."""
    if Path(spec).is_file():
        return json.loads(Path(spec).read_text())
    return json.loads(subprocess.run(["git", "show", spec], capture_output=True, text=True, check=True).stdout)


def main(before_path: str, after_path: str) -> None:
    before, after = read_golden(before_path), read_golden(after_path)
    for key in sorted(set(before) & set(after)):
        print(f"machine: {key}")
        b, a = before[key]["metrics"], after[key]["metrics"]
        for row in sorted(a):
            cells = [f"FPR@95 {100 * b[row]['metrics']['fpr95']:.2f} -> {100 * a[row]['metrics']['fpr95']:.2f}",
                     f"bAcc-head {100 * b[row]['metrics']['bacc_head']:.2f} -> {100 * a[row]['metrics']['bacc_head']:.2f}"]
            for score in ("maha_head", "rmaha"):
                cells.append(f"{score} AUROC {100 * b[row]['scores'][score]['auroc']:.2f} -> "
                             f"{100 * a[row]['scores'][score]['auroc']:.2f}")
            print(f"  {row:12s} " + "; ".join(cells))
        for name, files in after[key]["synthetic_png_sha256"].items():
            same = files == before[key]["synthetic_png_sha256"].get(name)
            print(f"  synthetic set {name}: images {'identical' if same else 'changed'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
