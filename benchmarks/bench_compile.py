"""Does ``torch.compile`` pay for the DiG-IN chain on CPU? One DiG-IN Adam step's work, eager vs compiled.

The pbc-lt-cpu pixel UNet (32 px, channels 32/64/64, randomly initialised), batch 8, a 20-step DDIM chain with
CFG 3, forward + backward to x_T (what one DiG-IN step costs), timed best of 2 after a warm-up, first eager,
then with ``backend.unet = torch.compile(backend.unet)`` (inductor, static shapes). Reports both times, the compile
time (first compiled call) and the largest difference of the samples and of the gradient.

    python benchmarks/bench_compile.py --threads 2 --out benchmarks/results/speed/bench-compile-cpu.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_cpu_limits import pbc_chain_step  # the same UNet and chain as the GFLOP/s figure


def best_of(fn, repeats: int = 2):
    """(fastest of ``repeats`` timed calls after a warm-up, the last call's result)."""
    fn()
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend, step = pbc_chain_step(args.batch)
    eager_s, (sample_e, grad_e) = best_of(step)
    backend.unet = torch.compile(backend.unet, dynamic=False)
    t0 = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t0
    compiled_s, (sample_c, grad_c) = best_of(step)
    report = {"threads": torch.get_num_threads(), "kernels": torch.backends.cpu.get_cpu_capability(),
              "torch": torch.__version__, "batch": args.batch, "eager_s": eager_s, "compiled_s": compiled_s,
              "speedup": eager_s / compiled_s, "first_compiled_call_s": compile_s,
              "steps_to_amortise": compile_s / max(eager_s - compiled_s, 1e-9),
              "max_sample_diff": (sample_e - sample_c).abs().max().item(),
              "grad_rel_diff": ((grad_e - grad_c).norm() / grad_e.norm()).item()}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
