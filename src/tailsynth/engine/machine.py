"""Which machine built a result: CPU model, the vector ISA torch dispatches to, torch version and thread count.

CPU results are bit-identical only on one kind of CPU with one torch thread count (AVX2 and AVX-512 kernels round
differently, and so do 1 and 2 threads), so every stage manifest records the :func:`machine_info` of the process
that built it and its :func:`machine_key`; a report lists the keys of its stages (:func:`stage_machine_keys`) and
says so when they differ. A manifest written before machine keys were recorded reads as :data:`UNKNOWN`.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from ..errors import TailsynthError
from ..utils import read_json
from .store import MANIFEST, Artifact

UNKNOWN = "unknown"  # the machine key of an artifact whose manifest has none (made before keys were recorded)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo "model name"), else ``platform.processor()`` or the architecture."""
    cpu = platform.processor() or platform.machine() or UNKNOWN
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def gpu_name() -> str | None:
    """The current CUDA device's name when this process has initialised CUDA, else None: a stage that never touched
    the GPU made CPU digits, and asking for the name would initialise CUDA (after which a fork cannot use it)."""
    import torch
    if not torch.cuda.is_initialized():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())


def machine_info() -> dict[str, Any]:
    """This process's machine: {"cpu", "isa", "torch", "threads", "gpu"} (threads: torch's count right now)."""
    import torch
    return {"cpu": cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "gpu": gpu_name()}


def short_machine_key(info: dict[str, Any] | None = None) -> str:
    """"<cpu> | <isa> | torch <version>" (the key of the golden values, tests/golden/tiny.json)."""
    info = info if info is not None else machine_info()
    return f"{info['cpu']} | {info['isa']} | torch {info['torch']}"


def machine_key(info: dict[str, Any] | None = None) -> str:
    """"<cpu> | <isa> | torch <version> | <threads> threads": results with one key are bit-identical on CPU."""
    info = info if info is not None else machine_info()
    return f"{short_machine_key(info)} | {info['threads']} threads"


def machine_description() -> str:
    """Where the numbers were measured, in words: architecture, OS, CPU model, cores, kernel ISA, torch threads,
    accelerator, torch and Python versions."""
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {platform.system()}, {cpu_model()}, {os.cpu_count()} CPU cores "
            f"({torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} torch threads), {gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def stage_machine_keys(artifacts: Iterable[tuple[Artifact, str]]) -> dict[str, list[str]]:
    """{machine key: ["stage/fingerprint8 (label)", ...]} over ``artifacts`` ((artifact, label) pairs) and every
    artifact upstream of them (their manifests' inputs); an artifact keeps the key it was built with (and is listed
    under those of its interrupted invocations too), one without a key (or without a readable manifest) counts as
    :data:`UNKNOWN`. Keys in order of first appearance."""
    todo = [(art.stage, art.fingerprint, Path(art.path), label) for art, label in artifacts]
    seen: set[tuple[str, str]] = set()
    keys: dict[str, list[str]] = {}
    while todo:
        stage, fp, path, label = todo.pop(0)
        if (stage, fp) in seen:
            continue
        seen.add((stage, fp))
        try:
            manifest = read_json(path / MANIFEST)
        except (TailsynthError, OSError, ValueError):  # moved or deleted: its machine is unknown
            manifest = {}
        label = label or manifest.get("label") or ""
        name = f"{stage}/{fp[:8]}" + (f" ({label})" if label else "")
        # a stage resumed on another machine is listed under the machines of its interrupted invocations too
        built_on = [manifest.get("machine_key") or UNKNOWN, *(manifest.get("resumed_machine_keys") or [])]
        for key in dict.fromkeys(built_on):
            keys.setdefault(key, []).append(name)
        for upstream in (manifest.get("inputs") or {}).values():
            try:
                todo.append((upstream["stage"], upstream["fingerprint"], Path(upstream["path"]), ""))
            except (KeyError, TypeError):
                continue
    return keys
