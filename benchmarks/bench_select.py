"""How long does IWP selection take, and how much memory does it need, as N grows?

Sweeps N ∈ {576, 2304, 16384} visual tokens, budgets of 35.3 / 22.2 / 11.1 % (the
paper's three), batch 1 and 8, H=8 KV heads, D=128, plus the target case (N=16384,
B=4, 11.1 %: under 30 s and 3 GB on a 2-core CPU; judged on the whole process's
peak, inputs and torch runtime included). Each case runs in a fresh
subprocess so its memory reading is its own. Times are the best of a few runs
(``seconds_all`` keeps every run), since other work on the machine only ever adds
time; the load average before and after is saved with the results.

Memory, honestly stated:
- CPU: ``peak_extra`` is the rise of the process's resident-set high-water mark
  (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call)
  above the resident size just before the call, i.e. everything the selection
  itself touched (temporaries, fp32 copies, allocator slack), not the inputs.
  ``peak_total`` is the whole process's high-water mark (inputs, torch runtime).
- CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the call
  (``peak_total``: the max itself); the caching allocator's reserve is not counted.

Usage: ``python -m benchmarks.bench_select [--quick] [--device cpu|cuda|all] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.harness import memory
from benchmarks.harness.report import default_out, table, write_json

FRACTIONS = (0.353, 0.222, 0.111)
TARGET = {"n": 16384, "batch": 4, "fraction": 0.111, "seconds": 30.0, "bytes": 3 * 2**30}
HEADS, DIM = 8, 128


def cases(quick: bool) -> list[dict]:
    sizes = (576, 2304) if quick else (576, 2304, 16384)
    out = [{"n": n, "batch": b, "fraction": f} for n in sizes for b in (1, 8) for f in FRACTIONS]
    out.append({"n": TARGET["n"], "batch": TARGET["batch"], "fraction": TARGET["fraction"]})
    return out


def measure(case: dict, device: str, repeats: int) -> dict:
    """Run one case in this process and return its timing and memory."""
    import torch

    import iwp_ops

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    shape = (case["batch"], HEADS, case["n"], DIM)
    keys = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    values = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    budget = round(case["fraction"] * case["n"])

    def run() -> None:
        iwp_ops.select_tokens(keys, values, budget)
        if device == "cuda":
            torch.cuda.synchronize()

    iwp_ops.select_tokens(keys[:, :, :64], values[:, :, :64], 8)  # warm-up: kernels, thread pool
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        memory.reset_peak()
        before = memory.status("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else memory.status("VmHWM")
    return {**case, "device": device, "dtype": str(dtype).removeprefix("torch."), "budget": budget,
            "seconds": min(times), "seconds_all": times, "repeats": repeats, "peak_extra_bytes": peak - before,
            "peak_total_bytes": peak, "input_bytes": 2 * keys.numel() * keys.element_size()}


def run_case(case: dict, device: str) -> dict:
    target = (case["n"], case["batch"], case["fraction"]) == (TARGET["n"], TARGET["batch"], TARGET["fraction"])
    repeats = 3 if target else 2 if case["n"] * case["batch"] > 2304 * 8 else 5
    try:
        return memory.in_fresh_process("benchmarks.bench_select", "--child",
                                       json.dumps({"case": case, "device": device, "repeats": repeats}))
    except RuntimeError as exc:
        raise RuntimeError(f"case {case} on {device} failed: {exc}") from exc


def results_table(rows: list[dict]) -> str:
    return table((("device", -6), ("N", 6), ("B", 2), ("keep", 6), ("budget", 6), ("time s", 8), ("extra MiB", 10),
                  ("total MiB", 10)),
                 [(r["device"], r["n"], r["batch"], f"{r['fraction'] * 100:.1f}%", r["budget"], f"{r['seconds']:.3f}",
                   f"{r['peak_extra_bytes'] / 2**20:.0f}", f"{r['peak_total_bytes'] / 2**20:.0f}") for r in rows])


def verdict(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if (r["device"], r["n"], r["batch"], r["fraction"]) == ("cpu", TARGET["n"], TARGET["batch"], TARGET["fraction"]):
            ok = r["seconds"] < TARGET["seconds"] and r["peak_total_bytes"] < TARGET["bytes"]
            out.append({"case": "cpu N=16384 B=4 11.1%", "seconds": r["seconds"], "peak_extra_bytes": r["peak_extra_bytes"],
                        "peak_total_bytes": r["peak_total_bytes"], "limit_seconds": TARGET["seconds"],
                        "limit_bytes": TARGET["bytes"], "pass": ok})
            break
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip N=16384 except the target case")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="'all': CPU, plus CUDA when available")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/cpu/bench_select.json (--device cuda: the GPU's folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["case"], spec["device"], spec["repeats"])))
        return

    import torch

    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()
    rows = []
    for device in devices:
        for case in cases(args.quick):
            rows.append(run_case(case, device))
            print(results_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(results_table(rows))
    checks = verdict(rows)
    for c in checks:
        print(f"target {c['case']}: {c['seconds']:.1f} s (< {c['limit_seconds']:.0f} s), "
              f"{c['peak_extra_bytes'] / 2**30:.2f} GiB extra, {c['peak_total_bytes'] / 2**30:.2f} GiB total "
              f"(< {c['limit_bytes'] / 2**30:.0f} GiB): {'PASS' if c['pass'] else 'FAIL'}")
    meta = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "machine": platform.machine(), "heads": HEADS, "dim": DIM,
            "quick": args.quick, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    out = args.out or default_out("bench_select", torch.device("cuda" if args.device == "cuda" else "cpu"))
    write_json(out, {"meta": meta, "rows": rows, "target": checks})


if __name__ == "__main__":
    main()
