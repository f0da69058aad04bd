"""What does pruning add at decoder layer K, and where does it go?

On an H100 the 7B prefill spent 53 ms at layer K when pruning a 6,272-token video, against
6 ms for the unpruned layer (`benchmarks/results/h100/`). This times the parts of that
overhead alone, on inputs shaped like the 7B's layer K (4 KV heads, head dim 128, bf16 on CUDA,
fp32 on CPU), at 11.1 % kept:

- ``select iwp``: the whole IWP selection (`iwp_ops.select_tokens`), and its two halves,
  ``iwp scores`` (magnitudes and duplication features, `iwp_ops.scoring.relevance`) and
  ``iwp pc-mmr`` (the greedy admission loop, `iwp_ops.pcmmr.admission_order`); on CUDA the loop
  replays a CUDA graph, and the ``eager`` rows time it launched kernel by kernel;
- ``select magnitude`` / ``select divprune``: a one-pass and a greedy peer, for scale
  (DivPrune on hidden states of the 7B's width, 3,584);
- ``fidelity``: `iwp_ops.weight_fidelity`, which `enable_pruning` records per item by default
  (``record_fidelity=True``); its ‖W_N‖² needs every token pair, O(N²).

Each row: median and fastest of ``--repeats`` timed runs after two warm-ups (synchronised on
CUDA), and on CUDA the number of GPU kernels one run launches (torch.profiler), since at these
sizes a GPU's time goes to launching kernels more than to arithmetic.

Usage: ``python benchmarks/bench_prune_overhead.py [--device cpu|cuda] [--sizes 1152 6272]
[--repeats 10] [--out PATH]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_model import timed  # noqa: E402 - needs the path above

HEADS, DIM, HIDDEN, FRACTION = 4, 128, 3584, 0.111


def kernels(fn, device) -> int | None:
    """GPU kernels launched by one call of fn (None on CPU)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timed(fn, device)
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def measure(fn, device, repeats: int) -> dict:
    for _ in range(2):
        fn()
    runs = [timed(fn, device) for _ in range(repeats)]
    return {"seconds": statistics.median(runs), "seconds_best": min(runs), "seconds_all": runs,
            "kernels": kernels(fn, device)}


def parts(n: int, device, dtype) -> dict:
    """The functions to time for n visual tokens, keyed by row name."""
    import torch

    import iwp_ops
    from iwp_ops.pcmmr import admission_order
    from iwp_ops.scoring import relevance

    gen = torch.Generator(device="cpu").manual_seed(n)
    keys = (torch.randn(1, HEADS, n, DIM, generator=gen) * 3).to(device, dtype)
    values = torch.randn(1, HEADS, n, DIM, generator=gen).to(device, dtype)
    hidden = torch.randn(1, n, HIDDEN, generator=gen).to(device, dtype)
    budget = max(1, round(FRACTION * n))
    mask = torch.ones(1, n, dtype=torch.bool, device=device)
    kept = iwp_ops.select_tokens(keys, values, budget)
    mhat, features, informative = relevance(keys, values, mask, queries=None, heads="mean", how="log_minmax")
    budgets = torch.tensor([budget], device=device)

    def order(cuda_graphs: bool = True):
        return admission_order(features, mhat, informative, mask, budgets, budget, lam=0.5, chunk=None,
                               pool_factor=2, dup_threshold=0.9, cuda_graphs=cuda_graphs)

    graphed = device.type == "cuda"
    return {
        "select iwp": lambda: iwp_ops.select_tokens(keys, values, budget),
        **({"select iwp, eager": lambda: iwp_ops.select_tokens(keys, values, budget, cuda_graphs=False)}
           if graphed else {}),
        "iwp scores": lambda: relevance(keys, values, mask, queries=None, heads="mean", how="log_minmax"),
        "iwp pc-mmr": order,
        **({"iwp pc-mmr, eager": lambda: order(cuda_graphs=False)} if graphed else {}),
        "select magnitude": lambda: iwp_ops.select_tokens(keys, values, budget, method="magnitude"),
        "select divprune": lambda: iwp_ops.select_tokens(keys, values, budget, method="divprune", embeddings=hidden),
        "fidelity": lambda: iwp_ops.weight_fidelity(keys, values, kept),
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1152, 6272],
                        help="visual tokens at layer K (default: the 7B benchmark's 16- and 64-frame videos)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_prune_overhead.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()

    rows = []
    for n in args.sizes:
        with torch.inference_mode():
            for label, fn in parts(n, device, dtype).items():
                row = {"n": n, "kept": max(1, round(FRACTION * n)), "part": label, **measure(fn, device, args.repeats)}
                rows.append(row)
                print(f"  N={n:<6} {label:<18} {row['seconds'] * 1e3:8.2f} ms (fastest {row['seconds_best'] * 1e3:.2f})"
                      + (f", {row['kernels']} kernels" if row["kernels"] is not None else ""), flush=True)

    print(f"\npruning overhead at layer K on {name} ({dtype}, H={HEADS}, D={DIM}, {FRACTION:.1%} kept), "
          f"median of {args.repeats}")
    print(f"{'N':>6}  {'kept':>5}  {'part':<18} {'ms':>8} {'fastest':>8} {'kernels':>8}")
    for r in rows:
        print(f"{r['n']:>6}  {r['kept']:>5}  {r['part']:<18} {r['seconds'] * 1e3:8.2f} {r['seconds_best'] * 1e3:8.2f} "
              f"{r['kernels'] if r['kernels'] is not None else '-':>8}")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": args.device,
            "device_name": name, "dtype": str(dtype), "torch": torch.__version__, "heads": HEADS, "dim": DIM,
            "fraction": FRACTION, "repeats": args.repeats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
