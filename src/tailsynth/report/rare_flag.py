"""The rare-case flag in ``results.json`` and the report: per method, the realised head flag rate on the test split
at each alpha with its beta-binomial band, and the tail recall (the evaluate stage's ``rare_flag`` block of
``metrics.json``, see ``pipeline/rare_flag.py`` and ``docs/scores-and-metrics.md``).

``results.json``: ``rare_flag.<method> = {score, rule, mode, n: [per seed], alphas: {"0.05": {alpha,
head_flag_rate, tail_recall, threshold: {mean, std, values}, band95: [[lo, hi] per seed], inside_band: [per
seed], outside_band: count, expected_head_flag_rate}}}``; an alpha too small for the calibration set has
``error`` instead.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .format import fmt_cell, order_methods
from .tables import Table


def aggregate_rare_flag(group: Sequence[Any]) -> dict[str, Any] | None:
    """One method's ``rare_flag`` block over its seeds (runs sorted by seed); None unless every seed has one."""
    from .aggregate import seed_stats
    blocks = [getattr(r, "rare_flag", None) or {} for r in group]
    if not blocks or not all(b.get("alphas") for b in blocks):
        return None
    modes = sorted({b.get("mode", "shared") for b in blocks})
    out: dict[str, Any] = {"score": blocks[0].get("score"), "rule": blocks[0].get("rule"),
                           "mode": modes[0] if len(modes) == 1 else "mixed", "n": [b.get("n") for b in blocks],
                           "alphas": {}}
    for key in blocks[0]["alphas"]:
        entries = [b["alphas"].get(key) or {} for b in blocks]
        errors = [e.get("error") for e in entries if e.get("error") or "threshold" not in e]
        if errors:
            out["alphas"][key] = {"alpha": entries[0].get("alpha"), "error": errors[0] or "missing"}
            continue
        entry: dict[str, Any] = {"alpha": entries[0]["alpha"]}
        for name in ("head_flag_rate", "tail_recall", "threshold"):
            if all(e.get(name) is not None for e in entries):
                entry[name] = seed_stats(e[name] for e in entries)
        entry["expected_head_flag_rate"] = [e.get("expected_head_flag_rate") for e in entries]
        entry["band95"] = [e.get("band95") for e in entries]
        entry["inside_band"] = [e.get("inside_band") for e in entries]
        entry["outside_band"] = sum(1 for e in entries if e.get("inside_band") is False)
        out["alphas"][key] = entry
    return out


def _band(bands: Sequence[Sequence[float] | None]) -> str:
    known = [tuple(b) for b in bands if b and None not in b]
    if not known:
        return "–"
    if len(set(known)) == 1:
        lo, hi = known[0]
        return f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    return "per seed: " + ", ".join(f"[{100 * lo:.1f}, {100 * hi:.1f}]" for lo, hi in known)


def rare_flag_table(results: Mapping[str, Any], order: Sequence[str] | None = None) -> Table | None:
    """Rows: methods x alpha; columns: alpha, realised head flag rate (mean ± std over seeds), its 95 % band,
    seeds outside the band, tail recall, n and the calibration mode. None when no row has the block."""
    block = results.get("rare_flag") or {}
    methods = [m for m in order_methods(list(results["methods"]), order) if block.get(m)]
    if not methods:
        return None
    modes = {block[m].get("mode") for m in methods}
    caption = ("Percent, mean ± sample std over seeds, on the test split. The flag: score > the split-conformal "
               "threshold, the k-th smallest of the n calibration head scores, k = ⌈(n+1)(1−α)⌉ (stored with the "
               "model; `tailsynth predict --alpha` uses the same). Under exchangeability a new head image is flagged "
               "with probability ≤ α; over calibration sets the head flag rate is Beta(l, n+1−l), l = ⌊(n+1)α⌋, "
               "so on m test head images the realised rate lies in the band (2.5 / 97.5 % of Beta-binomial(m, l, "
               "n+1−l) / m) with probability 95 %. Tail recall: share of the test tail images flagged.")
    if "shared" in modes or "mixed" in modes:
        caption += (" Mode shared: the validation head images that calibrate the threshold also chose the epoch, so "
                    "the calibration scores are not exchangeable with new ones (model selection favours epochs whose "
                    "validation head scores are low), and the guarantee and band are approximate; "
                    "classifier.calibration.mode=split holds calibration images out of selection.")
    table = Table("Rare-case flag", ["method", "α", "head flag rate", "95 % band", "seeds outside band",
                                     "tail recall ↑", "n (mode)"], caption=caption)
    for m in methods:
        entry = block[m]
        n_values = sorted({n for n in entry.get("n") or [] if n is not None})
        n_text = "/".join(str(n) for n in n_values) or "–"
        for key, alpha in sorted(entry["alphas"].items(), key=lambda kv: -float(kv[1].get("alpha") or kv[0])):
            label = f"{alpha.get('alpha', key):g}" if isinstance(alpha.get("alpha"), float) else str(key)
            if alpha.get("error"):
                table.rows.append([(m, ""), (label, ""), ("–", ""), ("–", ""), ("–", ""), ("–", ""),
                                   (f"{n_text} ({entry.get('mode')}): too few for this α", "")])
                continue
            seeds = len(alpha.get("inside_band") or [])
            table.rows.append([(m, ""), (label, ""), (fmt_cell(alpha.get("head_flag_rate")), ""),
                               (_band(alpha.get("band95") or []), ""), (f"{alpha.get('outside_band', 0)}/{seeds}", ""),
                               (fmt_cell(alpha.get("tail_recall")), ""), (f"{n_text} ({entry.get('mode')})", "")])
    return table
