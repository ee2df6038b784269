"""Generation speed: switchkd's KV-cache generation against transformers' own ``generate`` on the same
model exported to the LLaVA format, and against switchkd without the cache; measured side by side.

    python benchmarks/bench_generation.py                     # a ~30M-parameter model, CPU
    python benchmarks/bench_generation.py --width 512 --layers 8 --new-tokens 64 --batch 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from switchkd.config import ModelConfig
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.demo.tokenizer import train_tokenizer
from switchkd.formats.llava_hf import export_llava_hf
from switchkd.inference.predict import build_prompt
from switchkd.models import build_vlm
from switchkd.models.generation import GenerationConfig, generate

WORDS = "what colour is the circle square triangle at top left right bottom center red green blue yellow".split()


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tok"
        corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(400)]
        tokenizer = train_tokenizer(corpus, vocab_size=600, out_dir=tok_dir)
        # Logit rows = tokenizer size: switchkd never picks padded rows past the tokenizer, transformers would.
        llm = qwen2_config(
            len(tokenizer),
            width=args.width,
            layers=args.layers,
            heads=max(args.width // 64, 2),
            kv_heads=max(args.width // 128, 1),
        )
        llm["initializer_range"] = 0.5  # distinct logits: greedy paths do not hinge on float ties
        model = build_vlm(
            ModelConfig(
                vision=vision_config("clip", width=128, layers=4, image_size=224, patch_size=14),
                llm=llm,
                tokenizer=str(tok_dir),
            )
        ).eval()
        export_llava_hf(model, Path(tmp) / "hf")
        from transformers import LlavaForConditionalGeneration

        hf = LlavaForConditionalGeneration.from_pretrained(Path(tmp) / "hf").eval()
        ids = torch.tensor(
            [build_prompt(model, [{"role": "user", "content": "<image>\nwhat colour is the circle"}])] * args.batch
        )
        pixels = torch.randn(args.batch, 3, 224, 224)
        n = args.new_tokens
        ours = GenerationConfig(max_new_tokens=n, stop_token_ids=[])

        def run_ours():
            return generate(model, ids, pixel_values=pixels, cfg=ours)

        def run_nocache():
            return generate(
                model,
                ids,
                pixel_values=pixels,
                cfg=GenerationConfig(max_new_tokens=n, stop_token_ids=[], use_cache=False),
            )

        @torch.no_grad()
        def run_hf():
            return hf.generate(
                input_ids=ids,
                pixel_values=pixels,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
            )

        same = run_ours().tolist() == run_hf()[:, ids.shape[1] :].tolist()
        t_ours, t_hf, t_plain = _time(run_ours, args.reps), _time(run_hf, args.reps), _time(run_nocache, args.reps)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; {params:.1f}M parameters, "
            f"prompt {ids.shape[1]} tokens ({model.num_image_tokens} image), batch {args.batch}, {n} new tokens; "
            f"median of {args.reps}"
        )
        print("| generator | seconds | new tokens/s | × transformers time |")
        print("| --- | ---: | ---: | ---: |")
        for name, t in (
            ("switchkd, KV cache", t_ours),
            ("transformers LlavaForConditionalGeneration.generate", t_hf),
            ("switchkd, no cache (reference)", t_plain),
        ):
            print(f"| {name} | {t:.3f} | {args.batch * n / t:.1f} | {t / t_hf:.2f} |")
        print(f"identical greedy tokens: {same}")


if __name__ == "__main__":
    main()
