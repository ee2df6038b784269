"""The built-in end-to-end run: a synthetic visual world, a teacher, and a student distilled with
Switch-KD, evaluated against a student trained without a teacher.

    switchkd demo --out runs/demo            # about 5 minutes on 2 CPU cores, no downloads

    from switchkd.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig(out="runs/demo"))

Steps (each a normal switchkd training run, with its config, log and checkpoints under --out):
  1. the world: seeded images of shapes, captions (PT data) and questions (DFT data, test split)
  2. a tokenizer trained on the world's text (ChatML special tokens)
  3. the teacher: CLIP-style encoder + the larger Qwen2 LLM, trained on captions and questions in two
     phases; the phase-1 encoder stands for the pretrained encoder teacher and student share
  4. the student: the smaller LLM, its vision tower from that shared encoder; PT trains its projector
  5. from the same PT checkpoint: SFT (no teacher, the baseline) and DFT (Switch-KD), same steps
  6. all three answer the held-out questions; the table is printed and saved
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from switchkd.config import DistillConfig, ModelConfig, from_dict
from switchkd.demo.benchmark import WORLD, is_correct, load_world
from switchkd.demo.encoder import pretrain_encoder
from switchkd.demo.plots import plot_kinds, pyplot
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.demo.tokenizer import train_tokenizer
from switchkd.demo.world import WorldConfig, corpus, write_world
from switchkd.evaluation import evaluate_model, markdown_table
from switchkd.evaluation.stats import Difference, accuracy_interval, paired_difference
from switchkd.models import VisionLanguageModel, build_vlm
from switchkd.training import Config, DataConfig, TrainConfig, TrainResult, train

log = logging.getLogger("switchkd.demo")


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    world: WorldConfig = field(
        default_factory=lambda: WorldConfig(train_images=800, val_images=40, test_images=140, image_size=48)
    )
    vocab_size: int = 400
    vision_width: int = 64
    vision_layers: int = 3
    patch_size: int = 16
    """48-pixel images in 16-pixel patches: one image token per cell of the 3 x 3 grid."""
    teacher_width: int = 128
    teacher_layers: int = 4
    student_width: int = 64
    student_layers: int = 2
    hetero_width: int = 48
    hetero_image_size: int = 40
    hetero_patch_size: int = 8
    """The heterogeneous student's tower (``switchkd reproduce``, beyond the paper): SigLIP, 48 wide,
    40-px images in 8-px patches (25 image tokens against the teacher's 9)."""
    batch_size: int = 16
    encoder_steps: int = 300
    """Pre-training steps of the shared vision encoder on every cell's shape, colour and size
    (``demo/encoder.py``), before the teacher's LLM is trained on it."""
    encoder_lr: float = 2e-3
    teacher_steps: int = 900
    pt_steps: int = 60
    student_steps: int = 400
    lr: float = 1e-3
    pt_lr: float = 1e-3
    eval_limit: int | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)
    progress: bool = True
    diagnostics_every: int = 40
    """Steps between the vision-tower diagnostics of the student runs that log them (0: never)."""
    reuse: bool = False
    """Keep a finished run whose config is unchanged instead of training it again (``--resume``)."""

    @classmethod
    def quick(cls, out: str) -> DemoConfig:
        """A shortened run for tests (well under a minute)."""
        return cls(
            out=out,
            world=WorldConfig(train_images=48, val_images=4, test_images=14, image_size=48),
            encoder_steps=3,
            teacher_steps=6,
            pt_steps=3,
            student_steps=4,
            batch_size=8,
            progress=False,
            diagnostics_every=2,
        )


def _vision(cfg: DemoConfig) -> dict:
    return vision_config(
        "clip",
        width=cfg.vision_width,
        layers=cfg.vision_layers,
        image_size=cfg.world.image_size,
        patch_size=cfg.patch_size,
    )


def run_stage(
    cfg: DemoConfig,
    name: str,
    *,
    model: ModelConfig,
    data: Path,
    stage: str,
    steps: int,
    lr: float,
    teacher: ModelConfig | None = None,
    distill: DistillConfig | None = None,
    diagnose: bool = False,
    trainable: dict | None = None,
) -> TrainResult:
    """One ordinary training run of the demo, in ``<out>/<name>``; with ``diagnose``, it logs the vision
    tower's diagnostics every ``cfg.diagnostics_every`` steps. With ``cfg.reuse`` a finished run of the
    same config is kept (its final model and log); otherwise the folder starts over."""
    run = Config(
        model=model,
        teacher=teacher,
        data=DataConfig(train=str(data), num_workers=0, max_length=256, cache=True),
        train=TrainConfig(
            stage=stage,
            trainable=trainable or {},
            output_dir=str(Path(cfg.out) / name),
            lr=lr,
            max_steps=steps,
            per_device_batch_size=cfg.batch_size,
            warmup_ratio=0.05,
            seed=cfg.seed,
            progress=cfg.progress,
            log_every=2 if cfg.diagnostics_every == 2 else 10,
            diagnostics_every=cfg.diagnostics_every if diagnose else 0,
        ),
        distill=distill or cfg.distill,
    )
    folder = Path(cfg.out) / name
    stamp = folder / "demo_stage.json"
    if cfg.reuse and (folder / "final").is_dir() and _same_config(stamp, run):
        log.info("%s: finished with the same config, kept", folder)
        return TrainResult(folder, folder / "final", steps)
    stamp.unlink(missing_ok=True)
    result = train(run, overwrite=True)  # the demo's own folders: a re-run starts them over
    stamp.write_text(json.dumps(asdict(run), sort_keys=True, default=str))  # last: a killed run has none
    return result


def _same_config(stamp: Path, run: Config) -> bool:
    """Whether the finished run's saved config is ``run``'s. Read back as a Config, so that an option
    added since (at its default) does not count as a change; nor does the progress bar, which changes
    nothing but the console (a sweep started from Python without it is resumed from the CLI with it)."""
    if not stamp.is_file():
        return False
    try:
        saved = from_dict(Config, json.loads(stamp.read_text()))
    except (ValueError, TypeError):  # unreadable, or from a version with options since removed
        return False
    saved = replace(saved, train=replace(saved.train, progress=run.train.progress))
    return asdict(saved) == asdict(run)


def prepare_world(cfg: DemoConfig) -> tuple[dict, Path, Path]:
    """World files, a tokenizer, and a combined caption+question file for the teacher."""
    out = Path(cfg.out)
    paths = write_world(replace(cfg.world, seed=cfg.seed), out / "world")
    tokenizer = out / "tokenizer"
    train_tokenizer(corpus(paths), vocab_size=cfg.vocab_size, out_dir=tokenizer)
    mixed = out / "world" / "teacher_train.json"
    mixed.write_text(json.dumps(json.loads(paths["pt"].read_text()) + json.loads(paths["dft"].read_text())))
    return paths, tokenizer, mixed


def copy_encoder(folder: Path, *, into: VisionLanguageModel) -> None:
    """``into``'s vision tower takes the weights of the one saved in ``folder`` (the shared pretrained
    encoder that the paper's teacher and student both start from)."""
    into.vision_tower.load_state_dict(VisionLanguageModel.from_pretrained(folder).vision_tower.state_dict())


def train_teacher_variant(cfg: DemoConfig, name: str, *, tokenizer: Path, mixed: Path, encoder_from: Path) -> Path:
    """Another teacher for the same student (paper Table 6): an LLM of ``cfg.teacher_width`` x
    ``cfg.teacher_layers`` on the shared pretrained encoder (``encoder_from``, the one the student starts
    from), trained as the main teacher's second phase is."""
    torch.manual_seed(cfg.seed + 2)
    model = build_vlm(
        ModelConfig(
            vision=_vision(cfg),
            llm=qwen2_config(cfg.vocab_size, width=cfg.teacher_width, layers=cfg.teacher_layers, heads=4, kv_heads=2),
            tokenizer=str(tokenizer),
        )
    )
    copy_encoder(encoder_from, into=model)
    init = Path(cfg.out) / f"{name}_init"
    model.save_pretrained(init)
    steps = cfg.teacher_steps - max(cfg.teacher_steps // 3, 1)
    return run_stage(
        cfg, name, model=ModelConfig(pretrained=str(init)), data=mixed, stage="sft", steps=steps, lr=cfg.lr
    ).final_model


def train_teacher(cfg: DemoConfig, tokenizer: Path, mixed: Path) -> tuple[Path, Path]:
    """The teacher, trained in two phases on a pre-trained vision encoder (``demo/encoder.py``). The
    phase-1 model plays the "pretrained encoder" that the paper's teacher and student share: the student
    starts from its encoder, while the teacher's own copy keeps training in phase 2 (so V^S and V^T
    differ, and the visual switch has work to do)."""
    torch.manual_seed(cfg.seed)
    teacher = build_vlm(
        ModelConfig(
            vision=_vision(cfg),
            llm=qwen2_config(cfg.vocab_size, width=cfg.teacher_width, layers=cfg.teacher_layers, heads=4, kv_heads=2),
            tokenizer=str(tokenizer),
        )
    )
    pretrain_encoder(
        teacher,
        mixed.parent / "scenes.json",
        steps=cfg.encoder_steps,
        batch_size=32,
        lr=cfg.encoder_lr,
        seed=cfg.seed,
    )
    init = Path(cfg.out) / "teacher_init"
    teacher.save_pretrained(init)
    first = max(cfg.teacher_steps // 3, 1)
    # phase 1 learns to read the pre-trained features without wearing them away (the LLM's loss, early
    # on, would: the shape read-out fell from 99 % to 65 % when the tower trained from the start)
    phase1 = run_stage(
        cfg,
        "teacher_phase1",
        model=ModelConfig(pretrained=str(init)),
        data=mixed,
        stage="sft",
        steps=first,
        lr=cfg.lr,
        trainable={"vision": False},
    )
    final = run_stage(
        cfg,
        "teacher",
        model=ModelConfig(pretrained=str(phase1.final_model)),
        data=mixed,
        stage="sft",
        steps=cfg.teacher_steps - first,
        lr=cfg.lr,
    )
    return final.final_model, phase1.final_model


def student_init(cfg: DemoConfig, tokenizer: Path, encoder_from: Path) -> Path:
    """The student: the smaller LLM, its vision tower copied from ``encoder_from``."""
    torch.manual_seed(cfg.seed + 1)
    student = build_vlm(
        ModelConfig(
            vision=_vision(cfg),
            llm=qwen2_config(cfg.vocab_size, width=cfg.student_width, layers=cfg.student_layers),
            tokenizer=str(tokenizer),
        )
    )
    copy_encoder(encoder_from, into=student)
    path = Path(cfg.out) / "student_init"
    student.save_pretrained(path)
    return path


def hetero_student_init(cfg: DemoConfig, tokenizer: Path, mixed: Path) -> Path:
    """A student whose vision tower is unlike the teacher's (another kind, width, image size, patch size
    and token count): the student's LLM on a SigLIP tower. Its encoder is pretrained the way the shared
    one is, as part of a VLM trained on captions and questions for the teacher's first phase; the
    student then starts from that encoder and a fresh LLM."""

    def model(seed: int):
        torch.manual_seed(seed)
        vision = vision_config(
            "siglip",
            width=cfg.hetero_width,
            layers=cfg.vision_layers,
            image_size=cfg.hetero_image_size,
            patch_size=cfg.hetero_patch_size,
        )
        llm = qwen2_config(cfg.vocab_size, width=cfg.student_width, layers=cfg.student_layers)
        return build_vlm(ModelConfig(vision=vision, llm=llm, tokenizer=str(tokenizer)))

    out = Path(cfg.out)
    model(cfg.seed + 3).save_pretrained(out / "hetero_encoder_init")
    encoder = run_stage(
        cfg,
        "hetero_encoder",
        model=ModelConfig(pretrained=str(out / "hetero_encoder_init")),
        data=mixed,
        stage="sft",
        steps=max(cfg.teacher_steps // 3, 1),
        lr=cfg.lr,
    ).final_model
    student = model(cfg.seed + 1)
    copy_encoder(encoder, into=student)
    student.save_pretrained(out / "hetero_student_init")
    return out / "hetero_student_init"


def run_demo(cfg: DemoConfig) -> dict:
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    log.info("[1/6] writing the world and its tokenizer to %s", out)
    paths, tokenizer, mixed = prepare_world(cfg)
    log.info("[2/6] training the teacher (%d steps)", cfg.teacher_steps)
    teacher_dir, encoder = train_teacher(cfg, tokenizer, mixed)
    log.info("[3/6] student PT: projector only (%d steps)", cfg.pt_steps)
    init = student_init(cfg, tokenizer, encoder)
    pt = run_stage(
        cfg,
        "student_pt",
        model=ModelConfig(pretrained=str(init)),
        data=paths["pt"],
        stage="pt",
        steps=cfg.pt_steps,
        lr=cfg.pt_lr,
    )
    start = ModelConfig(pretrained=str(pt.final_model))
    log.info("[4/6] student SFT baseline (%d steps, no teacher)", cfg.student_steps)
    sft = run_stage(cfg, "student_sft", model=start, data=paths["dft"], stage="sft", steps=cfg.student_steps, lr=cfg.lr)
    log.info("[5/6] student DFT with Switch-KD (%d steps)", cfg.student_steps)
    dft = run_stage(
        cfg,
        "student_switchkd",
        model=start,
        data=paths["dft"],
        stage="dft",
        steps=cfg.student_steps,
        lr=cfg.lr,
        teacher=ModelConfig(pretrained=str(teacher_dir)),
    )
    log.info("[6/6] evaluating on %s", paths["test"])
    models = {"teacher": teacher_dir, "student (PT+SFT)": sft.final_model, "student (Switch-KD)": dft.final_model}
    results, correct = {}, {}
    for name, path in models.items():
        metrics = score(path, paths["test"].parent, limit=cfg.eval_limit)
        correct[name] = metrics.pop("correct")
        results[name] = {"world": metrics | {"interval": list(accuracy_interval([correct[name]]))}}
    gain = paired_difference([(correct["student (Switch-KD)"], correct["student (PT+SFT)"])])
    table = world_table(results) + "\n\n" + gain_line(gain, len(correct["student (PT+SFT)"]))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table + "\n\n" + markdown_table(results) + "\n")
    plot = draw_kinds(results, out / "kinds.png")
    summary = {
        "results": results,
        "table": table,
        "plot": plot,
        "student": str(dft.final_model),
        "chat": f"switchkd chat --model {dft.final_model} --image {first_test_image(paths)} --interactive",
        "seconds": time.perf_counter() - started,
    }
    return summary


def score(model_dir: Path, test_dir: Path, limit: int | None = None) -> dict:
    """A model's world metrics (accuracy, per-kind accuracy, n) and one 0/1 per question (``correct``,
    in the test file's order), on the first ``limit`` questions."""
    model = VisionLanguageModel.from_pretrained(model_dir)
    metrics, preds = evaluate_model(model, WORLD, test_dir, limit=limit, batch_size=32)
    items = load_world(test_dir)[:limit]
    return metrics | {"correct": [int(is_correct(preds.get(i.id, ""), i)) for i in items]}


def first_test_image(paths: dict) -> str:
    row = json.loads(paths["test"].read_text().splitlines()[0])
    return str(paths["test"].parent / row["image"])


def world_table(results: dict) -> str:
    """Accuracy (%) overall with its 95 % bootstrap interval, and per question type, one row per model."""
    types = sorted({t for r in results.values() for t in r["world"]["per_type"]})
    lines = [
        "| model | all | 95 % interval | " + " | ".join(types) + " |",
        "| --- |" + " ---: |" * (len(types) + 2),
    ]
    for name, r in results.items():
        w = r["world"]
        low, high = w["interval"]
        kinds = " | ".join(f"{w['per_type'][t]:.1f}" for t in types)
        lines.append(f"| {name} | {w['accuracy']:.1f} | [{low:.1f}, {high:.1f}] | {kinds} |")
    return "\n".join(lines)


def gain_line(gain: Difference, questions: int) -> str:
    return (
        f"Switch-KD - SFT: {gain.mean:+.1f} points, 95 % interval [{gain.low:+.1f}, {gain.high:+.1f}] "
        f"(paired bootstrap over the {questions} questions; one seed, so training noise is not in it): "
        f"{gain.reading()}."
    )


def draw_kinds(results: dict, png: Path) -> Path | None:
    """The per-kind accuracy bars of the three models (None without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return None
    scores = [{name: r["world"] for name, r in results.items()}]
    return plot_kinds(plt, scores, [(name.removeprefix("student "), name) for name in results], png=png)
