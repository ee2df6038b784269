"""Forward+backward time and peak memory of every distillation loss at Qwen's vocabulary, as ratios
to the full-vocabulary forward KL measured in the same run; and the O(k) pair terms (BiLD with
k = K on K-wide rows: both branches, through the same function training runs) against the literal
pair matrix.

    python benchmarks/bench_losses.py                      # V = 151,936, 128 and 1,024 rows, 1 and 2 threads
    python benchmarks/bench_losses.py --rows 128 --reps 3 --pair-ks 64 512 --threads 2
    python benchmarks/bench_losses.py --device cuda        # CUDA events and max_memory_allocated

``--contend`` keeps one other CPU-bound process running (as a DataLoader worker or another job would);
``--wait-policy active`` measures libgomp's spinning threads instead of switchkd's sleeping ones
(``OMP_WAIT_POLICY``, set by ``import switchkd``). "compiled" is the loss under ``torch.compile``
(``train.compile``: one graph, the full-sort knee); its first warm-up step compiles.

Each measurement runs in its own subprocess: two warm-up steps, then the median of ``--reps`` steps.
On CPU, peak memory is the first step's peak resident size above the resident size just before it:
the step's own working memory, the student's copy and its gradient included. On CUDA, times come from
CUDA events and peak memory is ``max_memory_allocated`` above the allocation before the step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def realistic_logits(rows: int, vocab: int, seed: int = 0):
    """LLM-like rows: a bell-shaped bulk, a handful of confident tokens, per-row sharpness."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.5 + 2.0 * torch.rand(rows, 1, generator=g)
    teacher = torch.randn(rows, vocab, generator=g) * scale
    top = torch.randint(0, vocab, (rows, 8), generator=g)
    teacher.scatter_add_(1, top, 6.0 + 4.0 * torch.rand(rows, 8, generator=g))
    student = 0.8 * teacher + torch.randn(rows, vocab, generator=g)
    return student, teacher


def wide_knee_logits(rows: int, vocab: int, seed: int = 0):
    """A sharp top-20 over a wide bell: the knee falls in the thousands (the hard case for the knee and
    the pairs, where realistic rows give a knee of a few dozen)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(rows, vocab, generator=g)
    top = torch.randint(0, vocab, (rows, 20), generator=g)
    teacher.scatter_add_(1, top, 8.0 + 4.0 * torch.rand(rows, 20, generator=g))
    student = 0.8 * teacher + 0.5 * torch.randn(rows, vocab, generator=g)
    return student, teacher


LOGITS = {"realistic": realistic_logits, "wide-knee": wide_knee_logits}


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak resident size (Linux: write 5 to clear_refs), so a step's peak is its own
    even when building the inputs peaked higher (as bfloat16 inputs made from float32 ones do)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmHWM") is not None
    except OSError:
        return False


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _literal_pair_kl(p_vals, q_vals, tau):
    """KL(P||Q) over the explicit k(k-1)/2 pairs (the layout the O(k) form avoids)."""
    k = p_vals.shape[1]
    iu = torch.triu_indices(k, k, offset=1)
    dp = (p_vals[:, iu[0]] - p_vals[:, iu[1]]) / tau
    dq = (q_vals[:, iu[0]] - q_vals[:, iu[1]]) / tau
    lp, lq = dp.log_softmax(-1), dq.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def _literal_bild(student, teacher, tau):
    """Both BiLD branches (teacher-led, student-led) with every entry of the row, reverse KL."""
    out = 0
    for led in (teacher, student.detach()):
        order = led.argsort(dim=-1, descending=True)
        out = out + _literal_pair_kl(student.gather(1, order), teacher.gather(1, order), tau)
    return out


def worker(spec: dict) -> dict:
    from switchkd.losses import DistillLoss, bild, knee_select

    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    kind = spec["kind"]
    if kind == "pair":
        rows, k = spec["rows"], spec["k"]
        teacher = (torch.randn(rows, k) * 3).to(device)
        s0 = teacher + torch.randn(rows, k, device=device)

        def step():
            s = s0.clone().requires_grad_(True)
            if spec["impl"] == "ok":
                out = bild(s, teacher, k=k, temperature=3.0, reduction="none")
            else:
                out = _literal_bild(s, teacher, 3.0)
            out.sum().backward()
    else:
        student, teacher = LOGITS[spec.get("logits", "realistic")](spec["rows"], spec["vocab"])
        student, teacher = student.to(device), teacher.to(device)
        if spec.get("dtype"):  # logits as a mixed-precision model returns them
            student, teacher = student.to(getattr(torch, spec["dtype"])), teacher.to(getattr(torch, spec["dtype"]))
        if kind == "knee":

            def step():
                knee_select(teacher, method=spec["method"])
                knee_select(student, method=spec["method"])
        else:
            fn = DistillLoss(spec["loss"], knee=spec.get("knee", "fast"))
            if spec.get("compile"):  # as train.compile runs it: one graph, the synchronisation-free path
                fn = torch.compile(fn, fullgraph=True)

            def step():
                s = student.clone().requires_grad_(True)
                fn(s, teacher).backward()

    if device.type == "cuda":
        return _cuda_measure(step, spec["reps"])
    base = _status_mb("VmRSS") if _reset_peak() else _peak_mb()
    step()  # warm-up (and the peak-memory measurement)
    peak = _peak_mb() - base
    step()  # a second warm-up: the first touches of fresh memory are the slowest on a VM
    times = []
    for _ in range(spec["reps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"ms": 1000 * times[len(times) // 2], "peak_mb": peak}


def _cuda_measure(step, reps: int) -> dict:
    step()
    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"ms": times[len(times) // 2], "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}


def run(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "OMP_WAIT_POLICY": spec["wait_policy"]}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


LOSS_ROWS = [
    ("fkl", {"loss": "fkl"}),
    ("rkl", {"loss": "rkl"}),
    ("bild_fkl (k=8)", {"loss": "bild_fkl"}),
    ("bild_rkl (k=8)", {"loss": "bild_rkl"}),
    ("dbild_fkl", {"loss": "dbild_fkl"}),
    ("dbild_rkl", {"loss": "dbild_rkl"}),
    ("dbild_rkl, full-sort knee (before)", {"loss": "dbild_rkl", "knee": "sort"}),
    ("dbild_rkl, compiled", {"loss": "dbild_rkl", "compile": True}),
    ("fkl, bfloat16 logits", {"loss": "fkl", "dtype": "bfloat16"}),
    ("dbild_rkl, bfloat16 logits", {"loss": "dbild_rkl", "dtype": "bfloat16"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pair-ks", type=int, nargs="*", default=[64, 512, 4096])
    parser.add_argument("--pair-rows", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads; each count is a table")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--logits", nargs="+", choices=list(LOGITS), default=list(LOGITS), help="kinds of rows")
    parser.add_argument(
        "--losses", nargs="+", help="only these table rows (fkl, the reference, always; 'knee' for the knee rows)"
    )
    parser.add_argument(
        "--contend",
        action="store_true",
        help="keep one other CPU-bound process running throughout (as a data worker or another job would)",
    )
    parser.add_argument(
        "--wait-policy",
        choices=["passive", "active"],
        default="passive",
        help="OpenMP threads at a barrier: sleep (passive, switchkd's default) or spin (active, libgomp's)",
    )
    parser.add_argument(
        "--literal-budget-gb",
        type=float,
        default=8.0,
        help="skip the literal pair matrix when its estimated memory exceeds this",
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    threads = args.threads if args.device == "cpu" else [torch.get_num_threads()]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.contend else None
    try:
        for n in threads:
            tables(args, n)
    finally:
        if busy is not None:
            busy.kill()


def tables(args, threads: int) -> None:
    where = f"{threads} thread(s), {os.cpu_count()} CPUs" if args.device == "cpu" else args.device
    where += f", OMP_WAIT_POLICY={args.wait_policy}" + (", one other CPU-bound process running" if args.contend else "")
    print(f"\n## torch {torch.__version__}, {where}; V = {args.vocab:,}; forward+backward, median of {args.reps}")
    wanted = [(name, extra) for name, extra in LOSS_ROWS if not args.losses or name in args.losses]
    for rows, logits in [(r, kind) for r in args.rows for kind in args.logits]:
        common = {"rows": rows, "vocab": args.vocab, "reps": args.reps, "threads": threads, "device": args.device}
        common |= {"logits": logits, "wait_policy": args.wait_policy}
        rows_run = [LOSS_ROWS[0], *(w for w in wanted if w != LOSS_ROWS[0])]  # fkl first: the reference
        results = [(name, run({"kind": "loss", **common, **extra})) for name, extra in rows_run]
        if not args.losses or "knee" in args.losses:
            results += [
                (f"knee only, {m} (teacher + student)", run({"kind": "knee", "method": m, **common}))
                for m in ("fast", "sort")
            ]
        ref = results[0][1]
        print(f"\n### {rows} rows, {logits} logits\n")
        print("| loss | time (ms) | × fkl time | peak extra memory (MB) | × fkl memory |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, r in results:
            if "error" in r or "error" in ref:
                print(f"| {name} | failed: {r.get('error') or ref.get('error')} | | | |")
                continue
            print(
                f"| {name} | {r['ms']:.1f} | {r['ms'] / ref['ms']:.2f} | {r['peak_mb']:.0f} | "
                f"{r['peak_mb'] / max(ref['peak_mb'], 1):.2f} |",
                flush=True,
            )
        by = dict(results)
        knee = "knee only, fast (teacher + student)"
        if "dbild_rkl" in by and knee in by and "error" not in by["dbild_rkl"] and "error" not in by[knee]:
            share = by["knee only, fast (teacher + student)"]["ms"] / by["dbild_rkl"]["ms"]
            print(
                f"\nknee selection's share of dbild_rkl: {100 * share:.0f}% (fast); "
                f"full sort alone: {by['knee only, sort (teacher + student)']['ms']:.0f} ms"
            )

    if args.pair_ks:
        print(
            f"\n### pair terms of both branches (BiLD, k = K on K-wide rows), {args.pair_rows} rows, forward+backward\n"
        )
        print("| k | O(k) (ms) | O(k) memory (MB) | literal pairs (ms) | literal memory (MB) |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for k in args.pair_ks:
            pair = {"kind": "pair", "rows": args.pair_rows, "k": k, "reps": args.reps, "threads": threads}
            pair["wait_policy"] = args.wait_policy
            pair["device"] = args.device
            fast = run({**pair, "impl": "ok"})
            est_gb = 2 * args.pair_rows * k * (k - 1) / 2 * 4 * 10 / 1e9  # ~10 float32 pair-sized tensors a branch
            if est_gb > args.literal_budget_gb:
                lit_cells = f"skipped (~{est_gb:.0f} GB) | –"
            else:
                lit = run({**pair, "impl": "literal"})
                lit_cells = (
                    f"failed: {lit['error']} | –" if "error" in lit else f"{lit['ms']:.1f} | {lit['peak_mb']:.0f}"
                )
            print(f"| {k} | {fast['ms']:.2f} | {fast['peak_mb']:.0f} | {lit_cells} |")


if __name__ == "__main__":
    main()
