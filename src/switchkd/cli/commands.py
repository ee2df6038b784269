"""Subcommands: ``COMMANDS[name] = (add_arguments, run, help)``; each ``run`` is a thin call into the library."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML with a `model:` section (vision, llm, projector, ...)")
    p.add_argument("--out", required=True, help="folder to write the assembled model to")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.projector=ldpv2")


def run_build(args: argparse.Namespace) -> int:
    from switchkd.config import load_model_config
    from switchkd.models import build_vlm

    model = build_vlm(load_model_config(args.config, args.overrides))
    model.save_pretrained(Path(args.out))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {n_params / 1e6:.1f}M-parameter VLM ({model.num_image_tokens} image tokens) to {args.out}")
    return 0


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run YAML (model, teacher, data, train, distill sections)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in train.output_dir (its checkpoints too)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, data paths and model shapes, then stop (no weights are loaded)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5 distill.loss=bild_rkl")


def run_train(args: argparse.Namespace) -> int:
    from switchkd.training import load_config, train
    from switchkd.training.dry_run import dry_run

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dry_run(cfg))
        return 0
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"trained {result.steps} steps; model saved to {result.final_model}")
    if result.skipped:
        print(f"skipped samples: {dict(result.skipped)}")
    return 0


def add_placement(p: argparse.ArgumentParser) -> None:
    """--device and --torch-dtype, the same for every command that runs a model."""
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--torch-dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 on a GPU, fp32 on the CPU",
    )


def _load_model(path: str, device: str, dtype: str):
    from switchkd.models import VisionLanguageModel
    from switchkd.models.placement import placement

    device, torch_dtype = placement(device, dtype)
    return VisionLanguageModel.from_pretrained(path, dtype=torch_dtype, device=device)


def add_chat(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved switchkd model folder")
    p.add_argument("--image", required=True, help="the image to talk about")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--question", help="ask one question and print the answer")
    how.add_argument("--interactive", action="store_true", help="multi-turn chat on standard input ('exit' ends)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.epilog = CHAT_EPILOG
    add_placement(p)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding (switchkd's addition)")
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling when --temperature > 0 (switchkd's addition)"
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.05,
        help="CTRL-style penalty on tokens already in the sequence; 1.05 as the released chat.py decodes, "
        "1.0 turns it off (what `switchkd eval` and `predict` use)",
    )


CHAT_EPILOG = (
    "Options follow the released chat.py (--model --image --question --interactive --max-new-tokens "
    "--torch-dtype), with its repetition penalty of 1.05. Where they differ from chat.py: --model is a local "
    "switchkd folder, not a Hub id loaded with remote code (import the release first: switchkd import --from "
    "switchkd-release); --torch-dtype auto is bf16 on a GPU and fp32 on the CPU; decoding is greedy unless "
    "--temperature > 0 (chat.py's other sampling settings are not documented); --temperature, --top-p, "
    "--repetition-penalty and --device are switchkd's additions."
)


def run_chat(args: argparse.Namespace) -> int:
    import sys

    from switchkd.data.images import load_image
    from switchkd.inference.chat import ChatSession, chat_loop
    from switchkd.models.generation import GenerationConfig

    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model folder not found: {args.model}")
    image = load_image(args.image)
    model = _load_model(args.model, args.device, args.torch_dtype)
    gen = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature or 1.0,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )
    session = ChatSession(model, image, gen)
    if args.question is not None:
        session.ask(args.question, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        sys.stdout.write("\n")
        return 0
    chat_loop(session, sys.stdin, sys.stdout)
    return 0


def add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--questions", required=True, help="LLaVA question JSONL: question_id, image, text")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to")
    p.add_argument("--out", required=True, help="answers JSONL; ids already in it are skipped (resume)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    add_placement(p)


def run_predict(args: argparse.Namespace) -> int:
    import json

    from switchkd.inference.predict import answer_questions, answered_ids, read_questions

    rows = read_questions(args.questions, args.image_root)
    out = Path(args.out)
    done = answered_ids(out)
    todo = [q for q in rows if q.id not in done]
    model = _load_model(args.model, args.device, args.torch_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="predict", dynamic_ncols=True)
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start : start + args.batch_size]
        answers = answer_questions(model, chunk, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        with out.open("a") as f:  # appended batch by batch: an interrupted run resumes where it stopped
            for q in chunk:
                f.write(
                    json.dumps(
                        {
                            "question_id": q.id,
                            "prompt": q.text,
                            "text": answers[q.id],
                            "model_id": Path(args.model).name,
                        }
                    )
                    + "\n"
                )
        bar.update(len(chunk))
    bar.close()
    print(f"{len(todo)} answered, {len(done)} already present -> {out}")
    return 0


def add_eval(p: argparse.ArgumentParser) -> None:
    from switchkd.evaluation import BENCHMARKS

    p.add_argument("--model", required=True, nargs="+", help="one or more saved model folders (side by side)")
    p.add_argument(
        "--benchmark",
        required=True,
        nargs="+",
        choices=sorted([*BENCHMARKS, "world"]),
        help="benchmark names; world is the built-in demo's held-out questions",
    )
    p.add_argument("--data", required=True, help="the benchmark's local folder (see docs/evaluation.md)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="folder for predictions (resumable), results.json and results.md")
    add_placement(p)


def run_eval_cmd(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from switchkd.demo import WORLD
    from switchkd.evaluation import markdown_table, run_eval

    benchmarks = [WORLD if name == WORLD.name else name for name in args.benchmark]
    results = run_eval(
        args.model,
        benchmarks,
        args.data,
        out_dir=args.out,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.torch_dtype,
    )
    if PartialState().is_main_process:
        print(markdown_table(results))
    return 0


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the world, the runs and the results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a much shorter run (a smoke test, numbers meaningless)")


def run_demo_cmd(args: argparse.Namespace) -> int:
    from switchkd.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    cfg.seed = args.seed
    summary = run_demo(cfg)
    print("\nHeld-out accuracy (%) on the built-in world:\n")
    print(summary["table"])
    if summary["plot"]:
        print(f"\nper-kind accuracy plot: {summary['plot']}")
    else:
        print("\n(no plot drawn: matplotlib is missing; pip install -e .[plot])")
    print(f"\nstudent saved to {summary['student']} ({summary['seconds'] / 60:.1f} min in all). Talk to it:")
    print(f"  {summary['chat']}")
    return 0


def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved switchkd model folder")
    p.add_argument("--to", required=True, choices=["llava-hf"], help="target format")
    p.add_argument("--out", required=True)


def run_export(args: argparse.Namespace) -> int:
    from switchkd.formats.llava_hf import export_llava_hf
    from switchkd.models import VisionLanguageModel

    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model folder not found: {args.model}")
    out = export_llava_hf(VisionLanguageModel.from_pretrained(args.model), args.out)
    print(f"exported to {out} (load with transformers.LlavaForConditionalGeneration.from_pretrained)")
    return 0


def add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="the folder to read")
    p.add_argument(
        "--from",
        dest="fmt",
        required=True,
        choices=["llava-hf", "switchkd-release", "mobilevlm"],
        help="llava-hf: a LlavaForConditionalGeneration folder; switchkd-release: the released Switch-KD "
        "checkpoint (xtuner layout); mobilevlm: a MobileVLM V2 checkpoint",
    )
    p.add_argument("--out", required=True, help="the switchkd model folder to write")
    p.add_argument(
        "--vision",
        default=None,
        help="release layouts: the vision tower's local folder, where the "
        "checkpoint's config has none (its weights fill a tower the checkpoint does not hold)",
    )
    p.add_argument("--llm", default=None, help="release layouts: the language model's local folder (config read)")
    p.add_argument(
        "--tokenizer", default=None, help="release layouts: a tokenizer folder, where the checkpoint has none"
    )
    p.add_argument(
        "--ldpv2-grid",
        type=int,
        default=12,
        help="release layouts: LDPNetV2's pooled grid side (12: 144 image tokens, as the release and MobileVLM V2)",
    )
    p.add_argument("--chat-template", default="chatml")
    p.add_argument("--system-prompt", default="You are a helpful assistant.")


def run_import(args: argparse.Namespace) -> int:
    if args.fmt == "llava-hf":
        from switchkd.formats.llava_hf import import_llava_hf

        given = [f"--{k}" for k in ("vision", "llm", "tokenizer") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for the release layouts; a LLaVA folder holds every part")
        import_llava_hf(args.source, args.out, args.chat_template, args.system_prompt)
    else:
        from switchkd.formats.release import import_release

        import_release(
            args.source,
            args.out,
            args.fmt,
            vision=args.vision,
            llm=args.llm,
            tokenizer=args.tokenizer,
            grid=args.ldpv2_grid,
            chat_template=args.chat_template,
            system_prompt=args.system_prompt,
        )
    print(f"imported to {args.out} (a switchkd model folder: chat, eval, export, or teacher.pretrained)")
    return 0


def add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the (student) model folder")
    p.add_argument("--teacher", default=None, help="a second model drawn beside it")
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--out", required=True, help="PNG to write")
    add_placement(p)


def run_attention(args: argparse.Namespace) -> int:
    from switchkd.data.images import load_image
    from switchkd.inference.attention import attention_figure

    for path in [args.model] + ([args.teacher] if args.teacher else []):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model folder not found: {path}")
    image = load_image(args.image)
    models = {}
    if args.teacher:
        models["teacher"] = _load_model(args.teacher, args.device, args.torch_dtype)
    models["student" if args.teacher else "model"] = _load_model(args.model, args.device, args.torch_dtype)
    print(f"wrote {attention_figure(models, image, args.question, args.out)}")
    return 0


def add_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=1, help="seeds to average over (mean ± std)")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--quick", action="store_true", help="tiny runs (a smoke test, numbers meaningless)")
    p.add_argument(
        "--resume", action="store_true", help="keep every finished run whose config is unchanged (after a kill)"
    )
    p.add_argument("--report", action="store_true", help="only rebuild tables.md and the plots from <out>/scores.json")


def run_reproduce_cmd(args: argparse.Namespace) -> int:
    from switchkd.demo import DemoConfig, run_reproduce
    from switchkd.demo.reproduce import report

    if args.report:
        print(report(args.out))
        return 0
    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    cfg.reuse = args.resume
    print(run_reproduce(cfg, args.seeds))
    print(f"tables.md and scores.json (one 0/1 per question and run) in {args.out}")
    return 0


COMMANDS = {
    "reproduce": (
        add_reproduce,
        run_reproduce_cmd,
        "the paper's ablations (Tables 3-6) in miniature: mean ± std over seeds, paired intervals, plots",
    ),
    "attention": (
        add_attention,
        run_attention,
        "draw the answer's attention over the image (teacher and student side by side)",
    ),
    "export": (add_export, run_export, "write a model in the Hugging Face LLaVA format (mlp2x_gelu projector)"),
    "import": (add_import, run_import, "read a LLaVA-HF, released Switch-KD or MobileVLM V2 model into switchkd"),
    "demo": (add_demo, run_demo_cmd, "the built-in end-to-end run: world, teacher, Switch-KD student, table"),
    "chat": (add_chat, run_chat, "talk with a model about an image (the released chat.py's options)"),
    "predict": (add_predict, run_predict, "answer a LLaVA-format question file (JSONL in, JSONL out, resumable)"),
    "eval": (add_eval, run_eval_cmd, "score models on benchmarks; several models side by side"),
    "train": (
        add_train,
        run_train,
        "train a stage (pt, dpt, sft, dft) from a YAML config; works under torchrun / accelerate launch",
    ),
    "build": (add_build, run_build, "assemble a VLM from local component folders (or config dicts) and save it"),
}
