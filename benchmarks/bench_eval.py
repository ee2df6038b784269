"""Evaluation speed: questions/s of switchkd's evaluation (``run_eval``, what ``switchkd eval`` runs) on the
built-in world, against plain transformers (``LlavaProcessor`` + ``LlavaForConditionalGeneration.generate``)
on the same model exported to the LLaVA format, the same questions, side by side in one run.

    python benchmarks/bench_eval.py                      # 64 questions, a ~30M-parameter model, CPU
    python benchmarks/bench_eval.py --questions 128 --batch 8 --width 512 --layers 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from switchkd.config import ModelConfig
from switchkd.demo import WORLD
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.demo.tokenizer import train_tokenizer
from switchkd.demo.world import WorldConfig, write_world
from switchkd.evaluation import run_eval
from switchkd.evaluation.benchmarks import get_benchmark
from switchkd.formats.llava_hf import export_llava_hf
from switchkd.models import build_vlm


def _model(tok_dir: Path, vocab: int, width: int, layers: int):
    llm = qwen2_config(vocab, width=width, layers=layers, heads=max(width // 64, 2), kv_heads=max(width // 128, 1))
    vision = vision_config("clip", width=128, layers=4, image_size=224, patch_size=14)
    return build_vlm(ModelConfig(vision=vision, llm=llm, tokenizer=str(tok_dir))).eval()


def _transformers_answers(hf_dir: Path, items, batch: int, max_new_tokens: int) -> dict[str, str]:
    """What a user of plain transformers writes: the exported processor's chat template and images."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    processor = LlavaProcessor.from_pretrained(hf_dir)
    processor.tokenizer.padding_side = "left"
    model = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    answers = {}
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": f"{processor.image_token}\n{i.prompt}"}],
                add_generation_prompt=True,
            )
            for i in chunk
        ]
        images = [Image.open(i.image).convert("RGB") for i in chunk]
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        new = out[:, inputs["input_ids"].shape[1] :]
        for item, tokens in zip(chunk, processor.batch_decode(new, skip_special_tokens=True)):
            answers[item.id] = tokens.strip()
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_world(WorldConfig(seed=0, train_images=8, val_images=2, test_images=args.questions), tmp / "w")
        texts = [m["value"] for r in json.loads(paths["dft"].read_text()) for m in r["conversations"]]
        tokenizer = train_tokenizer(texts, vocab_size=400, out_dir=tmp / "tok")
        model = _model(tmp / "tok", len(tokenizer), args.width, args.layers)
        model.save_pretrained(tmp / "ours")
        export_llava_hf(model, tmp / "hf")
        test_dir = paths["test"].parent
        items = get_benchmark(WORLD).load(test_dir)[: args.questions]

        def ours():
            out = tmp / "out"
            for old in out.glob("*") if out.is_dir() else []:
                old.unlink()
            run_eval([str(tmp / "ours")], [WORLD], test_dir, out_dir=out, limit=args.questions,
                     batch_size=args.batch, progress=False, device="cpu", dtype="fp32")  # fmt: skip
            lines = (out / "ours.world.predictions.jsonl").read_text().splitlines()
            return {row["question_id"]: row["text"] for row in map(json.loads, lines)}

        def theirs():
            return _transformers_answers(tmp / "hf", items, args.batch, WORLD.max_new_tokens)

        timings = {"switchkd eval": [], "transformers generate": []}
        answers = {}
        for _ in range(args.reps):
            for name, fn in (("switchkd eval", ours), ("transformers generate", theirs)):
                start = time.perf_counter()
                answers[name] = fn()
                timings[name].append(time.perf_counter() - start)
        same = sum(answers["switchkd eval"][i.id] == answers["transformers generate"][i.id] for i in items)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; {params:.1f}M parameters, "
            f"{len(items)} questions, batch {args.batch}, up to {WORLD.max_new_tokens} new tokens; "
            f"median of {args.reps} (model loading included in both)"
        )
        print("| path | seconds | questions/s | × transformers time |")
        print("| --- | ---: | ---: | ---: |")
        base = sorted(timings["transformers generate"])[args.reps // 2]
        for name, ts in timings.items():
            t = sorted(ts)[args.reps // 2]
            print(f"| {name} | {t:.2f} | {len(items) / t:.1f} | {t / base:.2f} |")
        print(f"identical answers: {same}/{len(items)}")


if __name__ == "__main__":
    main()
