"""``tailsynth report --merge``: one table (results.json, report.md, report.html) from several runs of one experiment.

Each input is a report folder (``runs/reports/<name>/``, a committed ``benchmarks/results/<exp>/``) or a
``results.json``. Rows are joined only when they are comparable: every row's ``config_digest`` (the experiment's
non-method settings) is the same, every input was made on the same split (``meta.split_fingerprint``) and on one
machine kind (``meta.machine_keys``: CPU digits are bit-identical only on one kind of CPU with one torch thread
count). A method in several inputs is refused unless ``prefer_last`` (then the later input's rows win). The rows are
joined by :func:`tailsynth.report.aggregate.merge_results`, the merge a run's report does with the one on disk.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import TailsynthError
from ..utils import atomic_write_text, json_default, stable_hash
from .aggregate import _PER_METHOD, merge_results, read_results
from .html import render_html
from .markdown import render_markdown
from .write import REPORT_HTML, REPORT_MD, RESULTS_JSON, _kept_runs

UNKNOWN = "unknown"  # the machine key of a results.json made before machine keys were recorded
_NOT_RECORDED = "not recorded (made before results.json recorded it)"


def results_path(path: str | Path) -> Path:
    """A report folder's results.json, or the file itself."""
    path = Path(path)
    return path / RESULTS_JSON if path.is_dir() else path


def _meta(data: Mapping[str, Any]) -> dict[str, Any]:
    return dict(data.get("meta") or {})


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: leaf value}."""
    if not isinstance(data, Mapping) or not data:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def _settings_of(digest: str | None, inputs: Sequence[tuple[Path, dict]]) -> dict | None:
    """The settings (``meta.settings`` of some input) whose digest is ``digest``, if any input records them."""
    for _path, data in inputs:
        settings = _meta(data).get("settings")
        if isinstance(settings, dict) and digest is not None and stable_hash(settings) == digest:
            return settings
    return None


def _check_settings(inputs: Sequence[tuple[Path, dict]]) -> None:
    rows = [(path, method, (data.get("config_digest") or {}).get(method))
            for path, data in inputs for method in data["methods"]]
    ref_path, ref_method, ref_digest = rows[0]
    for path, method, digest in rows[1:]:
        if digest == ref_digest:
            continue
        head = (f"cannot merge: row {method!r} of {path} was made with other non-method settings than row "
                f"{ref_method!r} of {ref_path}")
        ref_settings, settings = _settings_of(ref_digest, inputs), _settings_of(digest, inputs)
        if ref_settings is not None and settings is not None:
            a, b = _flat(ref_settings), _flat(settings)
            diff = [f"{key} = {json.dumps(a.get(key), default=str)} in {ref_path}, "
                    f"{json.dumps(b.get(key), default=str)} in {path}"
                    for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
            more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
            raise TailsynthError(f"{head}: " + "; ".join(diff[:5]) + more)
        raise TailsynthError(
            f"{head}: config_digest {ref_digest or _NOT_RECORDED} vs {digest or _NOT_RECORDED}; the setting cannot "
            "be named, as the results do not record their settings (a run made before the digest left out "
            "'threads' has another digest for the same settings: rerun it, its cached stages are reused)")


def _check_split(inputs: Sequence[tuple[Path, dict]]) -> None:
    ref_path, ref = inputs[0][0], _meta(inputs[0][1]).get("split_fingerprint")
    for path, data in inputs[1:]:
        split = _meta(data).get("split_fingerprint")
        if split != ref:
            raise TailsynthError(f"cannot merge {ref_path} and {path}: they were made on different splits "
                                 f"(split fingerprint {ref or _NOT_RECORDED} in {ref_path}, "
                                 f"{split or _NOT_RECORDED} in {path})")


def machine_keys(data: Mapping[str, Any]) -> list[str]:
    """The machine keys of a results.json's stages (``["unknown"]`` when it records none)."""
    return list(_meta(data).get("machine_keys") or [UNKNOWN])


def _check_machines(inputs: Sequence[tuple[Path, dict]]) -> None:
    keys = {key for _path, data in inputs for key in machine_keys(data)}
    if len(keys) > 1:
        where = "; ".join(f"{path}: {', '.join(machine_keys(data))}" for path, data in inputs)
        raise TailsynthError(f"cannot merge: the inputs were built on {len(keys)} machine kinds (CPU results are "
                             f"bit-identical only on one kind of CPU with one torch thread count): {where}")


def _check_methods(inputs: Sequence[tuple[Path, dict]], prefer_last: bool) -> None:
    holders: dict[str, list[Path]] = {}
    for path, data in inputs:
        for method in data["methods"]:
            holders.setdefault(method, []).append(path)
    twice = {m: paths for m, paths in holders.items() if len(paths) > 1}
    if twice and not prefer_last:
        lines = "; ".join(f"{m!r} in {', '.join(map(str, paths))}" for m, paths in twice.items())
        raise TailsynthError(f"cannot merge: methods appear in several inputs: {lines}; pass --prefer-last to keep "
                             "the rows of the later argument")
    primaries = {data.get("primary_score") for _path, data in inputs} - {None}
    if len(primaries) > 1:
        where = "; ".join(f"{path}: {data.get('primary_score')}" for path, data in inputs)
        raise TailsynthError(f"cannot merge: the inputs use different primary scores: {where}")


def _deep_merge(old: Any, new: Any) -> Any:
    """``new`` over ``old``, mappings joined key by key (the later input's value wins at the leaves)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = dict(old)
        for key, value in new.items():
            out[key] = _deep_merge(old[key], value) if key in old else value
        return out
    return new


def merge_report_files(inputs: Sequence[str | Path], out_dir: str | Path, *, prefer_last: bool = False,
                       command: str = "") -> tuple[Path, Path, Path]:
    """Check that ``inputs`` (report folders or results.json files) are rows of one table, join them and write
    ``results.json``, ``report.md`` and ``report.html`` to ``out_dir`` (replacing files there). Returns
    ``(md_path, html_path, json_path)``; a TailsynthError names what differs."""
    if not inputs:
        raise TailsynthError("report --merge needs at least one report folder or results.json")
    loaded = [(results_path(p), read_results(results_path(p))) for p in inputs]
    for path, data in loaded:
        if not data["methods"]:
            raise TailsynthError(f"{path} holds no rows")
    _check_settings(loaded)
    _check_split(loaded)
    _check_machines(loaded)
    _check_methods(loaded, prefer_last)
    merged = dict(loaded[0][1])
    for path, data in loaded[1:]:
        joined = merge_results(merged, data, str(path))
        for key in set(merged) & set(data) - set(_PER_METHOD) - {"meta", "seeds", "command", "primary_score"}:
            joined[key] = _deep_merge(merged[key], data[key])  # synthetic-set and oracle figures: per set
        merged = joined
    metas = [_meta(data) for _path, data in loaded]
    meta = dict(metas[0])
    for other in metas[1:]:
        meta.update({k: v for k, v in other.items() if v is not None})
    meta.pop("machine_key_stages", None)  # one machine kind (checked above): no stages to list per kind
    meta["machine_keys"] = list(dict.fromkeys(k for _path, data in loaded for k in machine_keys(data)))
    machines = list(dict.fromkeys(m.get("machine") for m in metas if m.get("machine")))
    if machines:
        meta["machine"] = "; ".join(machines)
    meta.pop("wall_time_s", None)  # a stage shared by the runs would count twice
    meta["merged_from"] = [str(path) for path, _data in loaded]
    merged["meta"] = meta
    merged["command"] = command
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / RESULTS_JSON
    try:
        text = json.dumps(merged, indent=2, allow_nan=False, default=json_default)
    except (ValueError, TypeError) as err:
        raise TailsynthError(f"cannot write {json_path}: {err}") from None
    atomic_write_text(json_path, text + "\n")
    shown = {**meta, "command": command, "methods": list(merged["methods"]), "seeds": merged.get("seeds")}
    md_path = out_dir / REPORT_MD
    atomic_write_text(md_path, render_markdown(merged, shown))
    html_path = render_html(merged, _kept_runs(merged, set()), shown, out_dir / REPORT_HTML)
    return md_path, html_path, json_path
