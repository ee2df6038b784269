"""The stages of the built-in pipeline, shared by the demo (``run.py``) and the ablations
(``reproduce.py``): the world and its tokenizer, the shared vision encoder and the teacher, the students'
starting points, one ordinary training run, and a model's score on the world's held-out questions.

    world (world.py) -> tokenizer (tokenizer.py) -> encoder (encoder.py) -> teacher -> student init
    -> runs (run_stage: PT, SFT, DFT) -> score (benchmark.py)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from switchkd.config import DistillConfig, ModelConfig, from_dict
from switchkd.demo.benchmark import WORLD, is_correct, load_world
from switchkd.demo.encoder import pretrain_encoder
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.demo.tokenizer import train_tokenizer
from switchkd.demo.world import WorldConfig, corpus, write_world
from switchkd.evaluation import evaluate_model
from switchkd.models import VisionLanguageModel, build_vlm
from switchkd.training import Config, DataConfig, TrainConfig, TrainResult, train

log = logging.getLogger("switchkd.demo")


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    world: WorldConfig = field(
        default_factory=lambda: WorldConfig(train_images=800, val_images=40, test_images=600, image_size=48)
    )
    """1,800 held-out questions (600 images, 3 each): one model's accuracy has a 95 % interval of about
    +-2.3 points and two students' paired difference about +-1.4 (420 questions gave +-3)."""
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

    @property
    def teacher_phase1_steps(self) -> int:
        """The teacher's first phase (vision frozen): a third of its steps; also the steps of the runs
        that stand in for it (a Table 6 teacher trains for the second phase's, the hetero encoder for this)."""
        return max(self.teacher_steps // 3, 1)


def _vision(cfg: DemoConfig) -> dict:
    return vision_config(
        "clip",
        width=cfg.vision_width,
        layers=cfg.vision_layers,
        image_size=cfg.world.image_size,
        patch_size=cfg.patch_size,
    )


def _fresh_vlm(cfg: DemoConfig, tokenizer: Path, *, seed: int, width: int, layers: int, vision: dict | None = None):
    """A new VLM seeded with ``seed``: the demo's CLIP tower (or ``vision``) and a ``width`` x ``layers``
    Qwen2 LLM on the world's tokenizer."""
    torch.manual_seed(seed)
    llm = qwen2_config(cfg.vocab_size, width=width, layers=layers)
    return build_vlm(ModelConfig(vision=vision or _vision(cfg), llm=llm, tokenizer=str(tokenizer)))


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


def train_teacher(cfg: DemoConfig, tokenizer: Path, mixed: Path) -> tuple[Path, Path]:
    """The teacher, trained in two phases on a pre-trained vision encoder (``demo/encoder.py``). The
    phase-1 model plays the "pretrained encoder" that the paper's teacher and student share: the student
    starts from its encoder, while the teacher's own copy keeps training in phase 2 (so V^S and V^T
    differ, and the visual switch has work to do)."""
    teacher = _fresh_vlm(cfg, tokenizer, seed=cfg.seed, width=cfg.teacher_width, layers=cfg.teacher_layers)
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
    first = cfg.teacher_phase1_steps
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


def train_teacher_variant(cfg: DemoConfig, name: str, *, tokenizer: Path, mixed: Path, encoder_from: Path) -> Path:
    """Another teacher for the same student (paper Table 6): an LLM of ``cfg.teacher_width`` x
    ``cfg.teacher_layers`` on the shared pretrained encoder (``encoder_from``, the one the student starts
    from), trained as the main teacher's second phase is."""
    model = _fresh_vlm(cfg, tokenizer, seed=cfg.seed + 2, width=cfg.teacher_width, layers=cfg.teacher_layers)
    copy_encoder(encoder_from, into=model)
    init = Path(cfg.out) / f"{name}_init"
    model.save_pretrained(init)
    steps = cfg.teacher_steps - cfg.teacher_phase1_steps
    return run_stage(
        cfg, name, model=ModelConfig(pretrained=str(init)), data=mixed, stage="sft", steps=steps, lr=cfg.lr
    ).final_model


def student_init(cfg: DemoConfig, tokenizer: Path, encoder_from: Path) -> Path:
    """The student: the smaller LLM, its vision tower copied from ``encoder_from``."""
    student = _fresh_vlm(cfg, tokenizer, seed=cfg.seed + 1, width=cfg.student_width, layers=cfg.student_layers)
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
        vision = vision_config(
            "siglip",
            width=cfg.hetero_width,
            layers=cfg.vision_layers,
            image_size=cfg.hetero_image_size,
            patch_size=cfg.hetero_patch_size,
        )
        return _fresh_vlm(cfg, tokenizer, seed=seed, width=cfg.student_width, layers=cfg.student_layers, vision=vision)

    out = Path(cfg.out)
    model(cfg.seed + 3).save_pretrained(out / "hetero_encoder_init")
    encoder = run_stage(
        cfg,
        "hetero_encoder",
        model=ModelConfig(pretrained=str(out / "hetero_encoder_init")),
        data=mixed,
        stage="sft",
        steps=cfg.teacher_phase1_steps,
        lr=cfg.lr,
    ).final_model
    student = model(cfg.seed + 1)
    copy_encoder(encoder, into=student)
    student.save_pretrained(out / "hetero_student_init")
    return out / "hetero_student_init"


def score(model_dir: Path, test_dir: Path, limit: int | None = None) -> dict:
    """A model's world metrics (accuracy, per-kind accuracy, n) and one 0/1 per question (``correct``,
    in the test file's order), on the first ``limit`` questions."""
    model = VisionLanguageModel.from_pretrained(model_dir)
    metrics, preds = evaluate_model(model, WORLD, test_dir, limit=limit, batch_size=32)
    items = load_world(test_dir)[:limit]
    return metrics | {"correct": [int(is_correct(preds.get(i.id, ""), i)) for i in items]}
