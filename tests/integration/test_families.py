"""Whole Hugging Face VLM families through the pathway interface: Qwen2.5-VL and LLaVA-OneVision. Tiny
models built from configs, saved as the Hub's folders and loaded back with ``from_pretrained``, the real
Qwen tokenizer, pictures of several sizes (each family reads an image at its own resolution, so every
picture takes its own number of image tokens)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from switchkd.config import DistillConfig, ModelConfig
from switchkd.data.dataset import Collator, LlavaDataset
from switchkd.data.images import batch_images
from switchkd.distillation.switch import VisualSwitchDistiller
from switchkd.inference.predict import build_prompt
from switchkd.models import build_vlm
from switchkd.models.onevision import OneVisionModel
from switchkd.models.pathway import load_vlm
from switchkd.models.qwen_vl import QwenVLModel
from tests.integration.runs import (
    assert_resumed,
    cli_train,
    curve,
    curve_bits,
    kill_after_first_checkpoint,
    make_config,
    mark_kept_log,
    same_weights,
    torchrun,
    trained_steps,
)

USER = Path(__file__).with_name("family_transformers_user.py")
CLASSES = {"qwen2_5_vl": QwenVLModel, "llava_onevision": OneVisionModel}


@pytest.fixture(params=["qwen2_5_vl", "llava_onevision"])
def world(request):
    return request.getfixturevalue("qwen_world" if request.param == "qwen2_5_vl" else "onevision_world")


def _load(folder, **kw):
    return build_vlm(ModelConfig(pretrained=str(folder), **kw))


def _pictures():
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in [(170, 100), (60, 150)]]


def _prompts(model, pictures, question="What is in the picture?"):
    """Left-padded prompts, one per picture, and the pictures as the model reads them (batched)."""
    reads = [model.image_reader.read(p) for p in pictures]
    rows = [build_prompt(model, [{"role": "user", "content": f"<image>\n{question}"}], r) for r in reads]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), model.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask, batch_images(reads)


def _transformers_inputs(model, ids, images) -> dict:
    """What transformers' own model takes beside the ids: Qwen2.5-VL marks the image tokens' modality."""
    if model.family == "qwen2_5_vl":
        return {"mm_token_type_ids": (ids == model.image_token_id).int(), **images}
    return dict(images)


def test_a_folder_loads_as_its_family_and_runs_as_transformers_runs_it(world):
    model = _load(world.student)
    assert isinstance(model, CLASSES[model.family])
    ids, mask, images = _prompts(model, _pictures())
    counts = (ids == model.image_token_id).sum(1).tolist()
    assert counts == [model.image_reader.num_tokens(model.image_reader.read(p)) for p in _pictures()]
    assert counts[0] != counts[1]  # each picture at its own aspect ratio
    with torch.no_grad():
        ours = model(ids, mask, **images).logits
        theirs = model.hf(input_ids=ids, attention_mask=mask, **_transformers_inputs(model, ids, images)).logits
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-5
    # greedy generation with the family's positions and a KV cache: transformers' generate picks the same tokens
    new = model.generate(ids, mask, **images, max_new_tokens=6, stop_token_ids=[])
    hf = model.hf.generate(
        input_ids=ids,
        attention_mask=mask,
        **_transformers_inputs(model, ids, images),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
    )
    assert torch.equal(new, hf[:, ids.shape[1] :])
    assert torch.equal(new, model.generate(ids, mask, **images, max_new_tokens=6, stop_token_ids=[], use_cache=False))


def test_qwen_reads_patches_on_a_grid_wrapped_in_vision_tokens(qwen_world):
    model = _load(qwen_world.student)
    ids, mask, images = _prompts(model, _pictures())
    grids = images["image_grid_thw"]
    assert grids.tolist() == [[1, 6, 10], [1, 10, 4]]  # ≤ max_pixels, sides multiples of 28
    assert (ids == model.image_token_id).sum(1).tolist() == [15, 10]  # t·h·w / 4
    start, end = model.image_wrap[0][0], model.image_wrap[1][0]
    row = ids[1][mask[1].bool()].tolist()
    first = row.index(model.image_token_id)
    assert row[first - 1] == start and row[first + 10] == end
    with torch.no_grad():
        # V is the blocks' output in the image's order: the merger on it is transformers' own image embedding
        ref = model.hf.model.visual(images["pixel_values"], grid_thw=grids).pooler_output
        assert torch.equal(model.projector(model.encode_vision(**images)), ref)


def test_onevision_reads_crops_and_packs_them_as_transformers_does(onevision_world):
    model = _load(onevision_world.student)
    ids, mask, images = _prompts(model, _pictures())
    assert images["image_sizes"].tolist() == [[100, 170], [150, 60]]
    assert images["pixel_values"].shape[1:] == (3, 56, 56)
    with torch.no_grad():
        features = model.encode_vision(**images)  # (crops, 16, width): SigLIP's last hidden states
        ref = model.hf.model.get_image_features(images["pixel_values"], images["image_sizes"]).pooler_output
        assert torch.equal(model.project(features, images), torch.cat(ref))
    assert features.shape[0] == sum(model.image_reader.crops(s) for s in images["image_sizes"])


def test_records_take_as_many_image_tokens_as_their_picture_and_batch_like_one_by_one(world):
    model = _load(world.student)
    data = LlavaDataset.for_model(world.paths["dft"], world.paths["dft"].parent, model)
    samples = [data[i] for i in range(4)]
    counts = [int((s["input_ids"] == model.image_token_id).sum()) for s in samples]
    assert len(set(counts)) == 4  # 56x56, 84x56, 56x112, 112x84 pixels
    batch = Collator(model.tokenizer.pad_token_id)(samples)
    shapes = {k: batch[k] for k in ("image_grid_thw", "image_sizes") if k in batch}
    out = model(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"], **shapes)
    # one by one, unpadded, each sample gives the same logits: its pixels were matched to its tokens
    for i, s in enumerate(samples):
        own = {k: s[k][None] for k in shapes}
        alone = model(s["input_ids"][None], pixel_values=s["pixel_values"], **own)
        n = s["input_ids"].numel()
        assert torch.allclose(out.logits[i, :n], alone.logits[0], atol=1e-5)


def _pair_batch(world, dtype=torch.float32, **distill):
    student, teacher = _load(world.student), _load(world.teacher)
    student.to(dtype).train()
    teacher.to(dtype)
    distiller = VisualSwitchDistiller(student, teacher, DistillConfig(**distill))
    data = LlavaDataset.for_model(world.paths["dft"], world.paths["dft"].parent, student, teacher=teacher)
    batch = Collator(student.tokenizer.pad_token_id)([data[i] for i in range(4)])
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return distiller, batch


def test_the_switch_gradient_reaches_the_students_vision_tower_and_nothing_of_the_teacher(world):
    # L_VSD alone: V^S -> teacher projector -> teacher LLM. A pair of one family needs no teacher view.
    distiller, batch = _pair_batch(world, ce_weight=0.0, lambda_align=0.0, lambda_vsd=1.0)
    assert "teacher" not in batch and distiller.switch_adapter is None
    out = distiller(batch)
    assert out["vsd"] > 0 and out["ce"] == 0
    out["total"].backward()
    student, teacher = distiller.student, distiller.teacher
    unused = set(student.vision_tower.unused_parameter_names())
    for name, p in student.vision_tower.encoder.named_parameters():
        if name not in unused:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in student.projector.parameters())  # the student's projector is off the path
    assert all(p.grad is None for p in student.llm.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # with every term on, every part of the student learns
    distiller, batch = _pair_batch(world)
    distiller(batch)["total"].backward()
    for part, module in distiller.student.parts().items():
        unused = set(module.unused_parameter_names()) if part == "vision" else set()
        encoder = module.encoder if part == "vision" else module
        assert all(p.grad is not None for n, p in encoder.named_parameters() if n not in unused), part


def test_fused_head_equals_plain_head_in_float64_for_values_and_every_gradient(world):
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        distiller, batch = _pair_batch(world, dtype=torch.float64)
        distiller.fused = fused
        distiller.chunk_rows = 16  # several chunks
        out = distiller(batch)
        out["total"].backward()
        grads = {n: p.grad.clone() for n, p in distiller.named_parameters() if p.grad is not None}
        results.append(({k: float(v.detach()) for k, v in out.items()}, grads))
    (plain, plain_grads), (fused, fused_grads) = results
    assert plain["vsd"] > 0 and plain["align"] > 0
    assert plain == pytest.approx(fused, rel=1e-10, abs=1e-12)
    assert plain_grads.keys() == fused_grads.keys() and len(plain_grads) > 40
    for name, g in plain_grads.items():
        assert torch.allclose(fused_grads[name], g, rtol=1e-9, atol=1e-12), name


def test_a_cross_family_pair_is_refused_in_one_line_saying_why(qwen_world, onevision_world, qwen_tokenizer_dir):
    from switchkd.demo.presets import qwen2_config, vision_config

    llava = build_vlm(
        ModelConfig(vision=vision_config(), llm=qwen2_config(151_936, width=32), tokenizer=str(qwen_tokenizer_dir))
    )
    qwen, onevision = _load(qwen_world.student), _load(onevision_world.teacher)
    for student, teacher in ((qwen, llava), (llava, qwen), (onevision, qwen), (llava, onevision)):
        with pytest.raises(
            ValueError, match=r"^teacher is a \w+ model and student a \w+ one: Switch-KD pairs one"
        ) as err:
            VisualSwitchDistiller(student, teacher, DistillConfig())
        assert "\n" not in str(err.value)


def test_a_pair_that_reads_images_differently_is_refused_naming_the_settings(qwen_world):
    student = _load(qwen_world.student)
    teacher = _load(qwen_world.teacher, image_processor={"max_pixels": 200 * 200})
    with pytest.raises(ValueError, match="read images differently .*size.* differ"):
        VisualSwitchDistiller(student, teacher, DistillConfig())


def test_dry_run_describes_a_pair_without_loading_weights(world, tmp_path):
    from switchkd.training import load_config
    from switchkd.training.dry_run import dry_run

    report = dry_run(load_config(make_config(world, tmp_path / "d")))
    name = {"qwen2_5_vl": "Qwen2.5-VL", "llava_onevision": "LLaVA-OneVision"}[_load(world.student).family]
    assert f"student: {name}, vision" in report and "tokens an image" in report
    assert "switch adapter: none needed" in report and "dry run passed" in report
    sharded = dry_run(load_config(make_config(world, tmp_path / "d", distributed="fsdp")), processes=2)
    assert "fsdp over 2 processes" in sharded


def test_lora_dft_on_qwen_adapts_the_language_model_and_merges_back_to_the_family_layout(qwen_world, tmp_path):
    from switchkd.training import load_config, train
    from switchkd.training.setup import build_objective

    lora = {
        "rank": 4,
        "alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "vision": True,
        "vision_target_modules": ["qkv"],
    }
    config = load_config(make_config(qwen_world, tmp_path / "lora", max_steps=2, lora=lora))
    objective = build_objective(config, verbose=False)
    trainable = [n for n, p in objective.named_parameters() if p.requires_grad]
    # adapters in the LLM's attention (2 layers x q, v) and the vision blocks' qkv (2 blocks); the merger trains whole
    assert sum(".language_model." in n for n in trainable) == 2 * 2 * 2
    assert sum(".visual.blocks." in n for n in trainable) == 2 * 2
    assert all("lora_" in n for n in trainable if ".merger." not in n)
    result = train(config)
    merged = load_vlm(result.final_model)
    start = load_vlm(qwen_world.student)
    assert merged.state_dict().keys() == start.state_dict().keys()  # the family's names, no adapters
    moved = [k for k, v in merged.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert any("q_proj" in k for k in moved) and any("visual.blocks.0.attn.qkv" in k for k in moved)
    frozen_but_moved = [k for k in moved if "k_proj" in k or (".mlp." in k and ".merger." not in k)]
    assert not frozen_but_moved


@pytest.mark.slow
def test_a_trained_student_is_a_family_folder_that_plain_transformers_loads_and_generates_with(world, tmp_path):
    """SFT until the tiny student answers; its final folder is read by transformers alone, in its own
    process: the same prompt ids, logits equal to switchkd's, and ``generate`` stops at <|im_end|>."""
    out = tmp_path / "sft"
    config = make_config(world, out, stage="sft", max_steps=60, lr=1e-2, scheduler="constant", warmup_ratio=0.0)
    cli_train(config)
    image = world.paths["dft"].parent / "1.png"  # a green 84 x 56 picture
    question = "What colour is the picture?"
    result = tmp_path / "user.json"
    done = subprocess.run(
        [sys.executable, str(USER), str(out / "final"), str(image), question, str(result)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(result.read_text())
    model = load_vlm(out / "final")
    assert theirs["model"] == type(model.hf).__name__ and not theirs["switchkd_imported"]
    read = model.image_reader.read(Image.open(image).convert("RGB"))
    ids = build_prompt(model, [{"role": "user", "content": f"<image>\n{question}"}], read)
    assert theirs["ids"] == ids  # the family's template and image tokens, token for token
    with torch.no_grad():
        ours = model(torch.tensor([ids]), **batch_images([read])).logits[0]
    assert torch.allclose(torch.tensor(theirs["logits"]).view_as(ours), ours, rtol=0, atol=1e-5)
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert theirs["generated"][-1] == im_end and theirs["generated"].count(im_end) == 1
    assert theirs["reply"] == "It is green."
    new = model.generate(torch.tensor([ids]), **batch_images([read]), max_new_tokens=20)[0].tolist()
    assert new == theirs["generated"]


@pytest.mark.slow
def test_a_killed_dft_run_resumes_exactly(world, tmp_path):
    """SIGKILL right after the step-2 checkpoint; ``--resume`` trains steps 3-5 only (16 records at 4 a
    step: across an epoch boundary) and ends bit for bit where the uninterrupted run ends."""
    full = tmp_path / "full"
    cli_train(make_config(world, full, max_steps=5, save_every=2))
    out = tmp_path / "killed"
    config = make_config(world, out, max_steps=5, save_every=2)
    assert kill_after_first_checkpoint(config, out, tmp_path) == 2
    mark_kept_log(out)
    assert_resumed(cli_train(config, "--resume").stderr, out, 2)
    assert trained_steps(out) == ([1, 2], [3, 4, 5])
    assert curve_bits(out) == curve_bits(full)
    assert json.loads((full / "log.jsonl").read_text().splitlines()[-1])["vsd"] > 0
    same_weights(full / "final", out / "final")


@pytest.mark.slow
def test_two_fsdp_processes_compute_what_one_process_computes(world, tmp_path):
    """FSDP2 over the family's own blocks (vision blocks and decoder layers, student and teacher): DFT on
    two processes equals one process taking both halves as accumulated micro-batches, across an epoch's
    end (16 records, 8 a step). Losses agree to 1e-5 relative. Weights agree to 1e-4 relative + 1e-5
    absolute except for at most 1 element in 100,000: an attention key bias has a zero gradient (softmax
    ignores a constant added to every score) and a never-seen token's embedding row a near-zero one,
    which Adam divides by its own norm, so those move by steps of rounding noise (SigLIP's k_proj.bias:
    32 of 4.9M elements here)."""
    from switchkd.training import load_config, train

    one = tmp_path / "one"
    train(load_config(make_config(world, one, grad_accum=2)))
    out = tmp_path / "fsdp"
    torchrun(make_config(world, out, distributed="fsdp"))
    assert curve(out) == pytest.approx(curve(one), rel=1e-5)
    assert json.loads((out / "log.jsonl").read_text().splitlines()[0])["vsd"] > 0
    want, got = load_vlm(one / "final").state_dict(), load_vlm(out / "final").state_dict()
    assert want.keys() == got.keys()
    far = {k: int((~torch.isclose(got[k], want[k], rtol=1e-4, atol=1e-5)).sum()) for k in want}
    assert sum(far.values()) <= sum(v.numel() for v in want.values()) // 100_000, {k: n for k, n in far.items() if n}


def test_predict_and_chat_answer_with_the_familys_images(world):
    """The prediction and chat paths read each picture as the family does: a batch of questions about
    pictures of different shapes answers as each question alone does, and a chat turn as ``generate``."""
    from switchkd.inference.chat import ChatSession
    from switchkd.inference.predict import Question, answer_questions

    model = _load(world.student)
    root = world.paths["dft"].parent
    questions = [Question(str(i), "What colour is the picture?", str(root / f"{i}.png")) for i in range(4)]
    together = answer_questions(model, questions, batch_size=4, max_new_tokens=5)
    alone = {q.id: answer_questions(model, [q], batch_size=1, max_new_tokens=5)[q.id] for q in questions}
    assert together == alone and len(together) == 4
    picture = Image.open(root / "1.png").convert("RGB")
    session = ChatSession(model, picture)
    session.gen.max_new_tokens = 5
    reply = session.ask("What colour is the picture?")
    read = model.image_reader.read(picture)
    ids = build_prompt(model, [{"role": "user", "content": "<image>\nWhat colour is the picture?"}], read)
    new = model.generate(torch.tensor([ids]), **batch_images([read]), max_new_tokens=5)[0]
    stops = set(model.tokenizer.convert_tokens_to_ids(["<|im_end|>"]))
    expected = model.tokenizer.decode([t for t in new.tolist() if t not in stops], skip_special_tokens=True).strip()
    assert reply == expected


def test_image_processor_settings_beside_a_switchkd_folder_are_a_config_error_naming_the_key(tiny_world):
    from switchkd.config import ConfigError

    with pytest.raises(ConfigError, match=r"^model\.image_processor: .*apply to Qwen2.5-VL and LLaVA-OneVision"):
        build_vlm(ModelConfig(pretrained=str(tiny_world.student), image_processor={"max_pixels": 40_000}))
