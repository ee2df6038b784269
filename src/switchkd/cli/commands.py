"""The subcommands, one table: ``COMMANDS[name] = Command(help, arguments, run)``.

Each command is two functions: ``<name>_arguments`` declares its options and ``<name>_command`` parses
them into a config or a few values, calls one library function and prints the outcome. Nothing else
lives here: reading, writing, resuming and checking belong to the library (a missing model folder is
``from_pretrained``'s error, not a second check here).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML with a `model:` section (vision, llm, projector, ...)")
    p.add_argument("--out", required=True, help="folder to write the assembled model to")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.projector=ldpv2")


def build_command(args: argparse.Namespace) -> int:
    from switchkd.config import load_model_config
    from switchkd.models import build_vlm

    model = build_vlm(load_model_config(args.config, args.overrides))
    model.save_pretrained(Path(args.out))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {n_params / 1e6:.1f}M-parameter VLM ({model.num_image_tokens} image tokens) to {args.out}")
    return 0


def train_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("WORLD_SIZE", 8)),
        help="with --dry-run and train.distributed=fsdp: the processes to report each one's share for "
        "(default: $WORLD_SIZE, else 8)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5 distill.loss=bild_rkl")


def train_command(args: argparse.Namespace) -> int:
    from switchkd.training import load_config, train
    from switchkd.training.dry_run import dry_run

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dry_run(cfg, processes=args.processes))
        return 0
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"trained {result.steps} steps; model saved to {result.final_model}")
    if result.skipped:
        print(f"skipped samples: {dict(result.skipped)}")
    return 0


def placement_arguments(p: argparse.ArgumentParser) -> None:
    """--device and --torch-dtype, the same for every command that runs a model."""
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--torch-dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 on a GPU, fp32 on the CPU",
    )


def _load_model(path: str, device: str, dtype: str):
    from switchkd.models.pathway import load_vlm
    from switchkd.models.placement import placement

    device, torch_dtype = placement(device, dtype)
    return load_vlm(path, dtype=torch_dtype, device=device)


def chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved switchkd model folder")
    p.add_argument("--image", required=True, help="the image to talk about")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--question", help="ask one question and print the answer")
    how.add_argument("--interactive", action="store_true", help="multi-turn chat on standard input ('exit' ends)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.epilog = CHAT_EPILOG
    placement_arguments(p)
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


def chat_command(args: argparse.Namespace) -> int:
    import sys

    from switchkd.data.images import load_image
    from switchkd.inference.chat import ChatSession, chat_loop
    from switchkd.models.generation import GenerationConfig

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


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--questions", required=True, help="LLaVA question JSONL: question_id, image, text")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to")
    p.add_argument("--out", required=True, help="answers JSONL; ids already in it are skipped (resume)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    placement_arguments(p)


def predict_command(args: argparse.Namespace) -> int:
    from switchkd.inference.predict import predict_file, read_questions

    questions = read_questions(args.questions, args.image_root)  # every row checked before the model loads
    model = _load_model(args.model, args.device, args.torch_dtype)
    answered, present = predict_file(
        model,
        questions,
        args.out,
        model_id=Path(args.model).name,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    print(f"{answered} answered, {present} already present -> {args.out}")
    return 0


def eval_arguments(p: argparse.ArgumentParser) -> None:
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
    placement_arguments(p)


def eval_command(args: argparse.Namespace) -> int:
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


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the world, the runs and the results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a much shorter run (a smoke test, numbers meaningless)")


def demo_command(args: argparse.Namespace) -> int:
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


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved switchkd model folder")
    p.add_argument("--to", required=True, choices=["llava-hf"], help="target format")
    p.add_argument("--out", required=True)


def export_command(args: argparse.Namespace) -> int:
    from switchkd.formats.llava_hf import export_llava_hf
    from switchkd.models import VisionLanguageModel

    out = export_llava_hf(VisionLanguageModel.from_pretrained(args.model), args.out)
    print(f"exported to {out} (load with transformers.LlavaForConditionalGeneration.from_pretrained)")
    return 0


def import_arguments(p: argparse.ArgumentParser) -> None:
    from switchkd.formats import IMPORT_FORMATS

    p.add_argument("source", help="the folder to read")
    p.add_argument(
        "--from",
        dest="fmt",
        required=True,
        choices=IMPORT_FORMATS,
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


def import_command(args: argparse.Namespace) -> int:
    from switchkd.formats import import_model

    options = {"chat_template": args.chat_template, "system_prompt": args.system_prompt}
    if args.fmt != "llava-hf":
        options["grid"] = args.ldpv2_grid
    extra = {k: getattr(args, k) for k in ("vision", "llm", "tokenizer") if getattr(args, k) is not None}
    import_model(args.source, args.out, args.fmt, **options, **extra)
    print(f"imported to {args.out} (a switchkd model folder: chat, eval, export, or teacher.pretrained)")
    return 0


def attention_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the (student) model folder")
    p.add_argument("--teacher", default=None, help="a second model drawn beside it")
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--out", required=True, help="PNG to write")
    placement_arguments(p)


def attention_command(args: argparse.Namespace) -> int:
    from switchkd.data.images import load_image
    from switchkd.inference.attention import attention_figure

    image = load_image(args.image)
    models = {}
    if args.teacher:
        models["teacher"] = _load_model(args.teacher, args.device, args.torch_dtype)
    models["student" if args.teacher else "model"] = _load_model(args.model, args.device, args.torch_dtype)
    print(f"wrote {attention_figure(models, image, args.question, args.out)}")
    return 0


def reproduce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=1, help="seeds to average over (mean ± std)")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--quick", action="store_true", help="tiny runs (a smoke test, numbers meaningless)")
    p.add_argument(
        "--resume", action="store_true", help="keep every finished run whose config is unchanged (after a kill)"
    )
    p.add_argument("--report", action="store_true", help="only rebuild tables.md and the plots from <out>/scores.json")


def reproduce_command(args: argparse.Namespace) -> int:
    from switchkd.demo import DemoConfig, run_reproduce
    from switchkd.demo.report import report

    if args.report:
        print(report(args.out))
        return 0
    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    cfg.reuse = args.resume
    print(run_reproduce(cfg, args.seeds))
    print(f"tables.md and scores.json (one 0/1 per question and run) in {args.out}")
    return 0


def config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", action="store_true", help="print the run config schema (what this command does)")
    p.add_argument("--config", default=None, help="a run YAML: show its values (defaults filled in) instead")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to --config, e.g. train.lr=2e-5")


def config_command(args: argparse.Namespace) -> int:
    from switchkd.config import Config, describe, load_config

    cfg = load_config(args.config, args.overrides) if args.config or args.overrides else None
    print("\n".join(describe(Config, cfg)))
    return 0


def plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run YAML (its models are built on the meta device)")
    p.add_argument("--gpus", type=int, default=8, help="processes (GPUs) the step is spread over")
    p.add_argument("--gpu-memory", default="80GB", help="memory per GPU, e.g. 80GB or 40GB")
    p.add_argument("--engine", choices=["ddp", "zero2", "fsdp"], default=None, help="default: train.distributed")
    p.add_argument("--tokens", type=int, default=None, help="tokens per sample (default: data.max_length)")
    p.add_argument("--rows", type=int, default=None, help="supervised rows per micro-batch (default: all text)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.per_device_batch_size=8")


def plan_command(args: argparse.Namespace) -> int:
    from switchkd.config import load_config
    from switchkd.training.plan import GB, fit, plan_for, plan_step

    cfg = load_config(args.config, args.overrides)
    memory = float(args.gpu_memory.upper().removesuffix("B").removesuffix("G")) * GB
    student, teacher, shape = plan_for(cfg, gpus=args.gpus, engine=args.engine, tokens=args.tokens, rows=args.rows)
    plan = plan_step(cfg, student, teacher, shape)
    print(
        f"{shape.engine} on {shape.gpus} GPU(s), per-GPU batch {shape.batch} x {shape.tokens} tokens, "
        f"{shape.rows:,} supervised rows\n\n{plan.table()}\n"
    )
    verdict = "fits" if plan.peak <= memory else "does NOT fit"
    print(f"{plan.peak / GB:,.1f} GB of {memory / GB:,.0f} GB: {verdict}")
    print(fit(cfg, student, teacher, shape, memory=memory))
    chunk = plan.parts["one chunk of logits, gradients, knee"]
    print(
        f"the loss head's chunk takes {chunk / GB:,.2f} GB of it; train.loss_chunk_rows sets its rows "
        "(fewer rows, less memory, the same result)"
    )
    return 0


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train a stage (pt, dpt, sft, dft) from a YAML config; works under torchrun / accelerate launch",
        train_arguments,
        train_command,
    ),
    "config": Command(
        "print every run config section and field with its default (or a YAML's values) and what it means",
        config_arguments,
        config_command,
    ),
    "plan": Command(
        "the per-GPU memory of a training step before launching it, and the largest batch that fits",
        plan_arguments,
        plan_command,
    ),
    "build": Command(
        "assemble a VLM from local component folders (or config dicts) and save it", build_arguments, build_command
    ),
    "eval": Command("score models on benchmarks; several models side by side", eval_arguments, eval_command),
    "predict": Command(
        "answer a LLaVA-format question file (JSONL in, JSONL out, resumable)", predict_arguments, predict_command
    ),
    "chat": Command("talk with a model about an image (the released chat.py's options)", chat_arguments, chat_command),
    "attention": Command(
        "draw the answer's attention over the image (teacher and student side by side)",
        attention_arguments,
        attention_command,
    ),
    "export": Command(
        "write a model in the Hugging Face LLaVA format (mlp2x_gelu projector)", export_arguments, export_command
    ),
    "import": Command(
        "read a LLaVA-HF, released Switch-KD or MobileVLM V2 model into switchkd", import_arguments, import_command
    ),
    "demo": Command(
        "the built-in end-to-end run: world, teacher, Switch-KD student, table", demo_arguments, demo_command
    ),
    "reproduce": Command(
        "the paper's ablations (Tables 3-6) in miniature: mean ± std over seeds, paired intervals, plots",
        reproduce_arguments,
        reproduce_command,
    ),
}
