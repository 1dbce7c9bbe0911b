"""Before/after figures of the tiny test experiment from two golden files (tests/golden/tiny.json versions):

    git show e88a31a:tests/golden/tiny.json > /tmp/before.json
    python benchmarks/diagnostics/compare_golden.py /tmp/before.json tests/golden/tiny.json

Prints, per row, FPR@95 / bAcc-head of P(tail) and the AUROC of maha_head and rmaha, before -> after, and
whether each synthetic set's images changed (entries of the machine both files share)."""
import json
import sys


def main(before_path: str, after_path: str) -> None:
    before, after = json.load(open(before_path)), json.load(open(after_path))
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
