"""Distilling across different vision towers: the switch adapter and the teacher's own view of the data."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors import safe_open
from torch.utils.data import DataLoader

from switchkd.config import DistillConfig, ModelConfig
from switchkd.data.dataset import Collator, LlavaDataset
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.distillation import VisualSwitchDistiller
from switchkd.distillation.adapter import SwitchAdapter
from switchkd.models import VisionLanguageModel, build_vlm
from switchkd.training import checkpoints, load_config, train


@pytest.fixture(scope="module")
def siglip_teacher(tiny_world, tmp_path_factory):
    """A teacher unlike the student (CLIP, 32 wide, 32-px images in 8-px patches: 4 x 4 tokens): SigLIP,
    48 wide, 36-px images in 12-px patches (3 x 3 tokens), a larger LLM."""
    torch.manual_seed(1)
    model = build_vlm(
        ModelConfig(
            vision=vision_config("siglip", width=48, image_size=36, patch_size=12),
            llm=qwen2_config(400, width=64, layers=2),
            tokenizer=str(tiny_world.tokenizer),
        )
    )
    folder = tmp_path_factory.mktemp("siglip_teacher")
    model.save_pretrained(folder)
    return folder


def _pair(tiny_world, teacher_dir, **distill):
    student = VisionLanguageModel.from_pretrained(tiny_world.student)
    teacher = VisionLanguageModel.from_pretrained(teacher_dir)
    distiller = VisualSwitchDistiller(student, teacher, DistillConfig(**distill)).train()
    ds = LlavaDataset.for_model(tiny_world.paths["dft"], tiny_world.paths["dft"].parent, student, teacher=teacher)
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=Collator(student.tokenizer.pad_token_id))))
    return distiller, student, teacher, ds, batch


def test_each_model_reads_the_sample_its_own_way_with_the_same_supervised_tokens(tiny_world, siglip_teacher):
    _, student, teacher, ds, batch = _pair(tiny_world, siglip_teacher)
    assert (student.num_image_tokens, teacher.num_image_tokens) == (16, 9)
    sample = ds[0]
    own, theirs = sample, sample["teacher"]
    assert (own["input_ids"] == student.image_token_id).sum() == 16
    assert (theirs["input_ids"] == student.image_token_id).sum() == 9
    assert own["labels"][own["labels"] != -100].tolist() == theirs["labels"][theirs["labels"] != -100].tolist()
    assert own["pixel_values"].shape[-1] == 32 and theirs["pixel_values"].shape[-1] == 36
    assert batch["pixel_values"].shape[0] == batch["teacher"]["pixel_values"].shape[0] == 3
    assert batch["teacher"]["input_ids"].shape[1] == batch["input_ids"].shape[1] - 7
    # a homogeneous pair's samples carry no teacher view at all
    same = LlavaDataset.for_model(tiny_world.paths["dft"], tiny_world.paths["dft"].parent, student, teacher=student)
    assert "teacher" not in same[0]


@pytest.mark.parametrize("student_longer", [True, False])
def test_a_sample_cut_at_max_length_keeps_the_same_supervised_tokens_in_both_views(
    tiny_world, siglip_teacher, student_longer
):
    # 16 image tokens for the student, 9 for the teacher: cut at one max_length, the two prompts would
    # lose different numbers of answer tokens (the demo's heterogeneous DFT failed on exactly that)
    student = VisionLanguageModel.from_pretrained(tiny_world.student)
    teacher = VisionLanguageModel.from_pretrained(siglip_teacher)
    if not student_longer:
        student, teacher = teacher, student
    full = LlavaDataset.for_model(tiny_world.paths["dft"], tiny_world.paths["dft"].parent, student, teacher=teacher)
    uncut = full[0]
    cut_at = uncut["input_ids"].numel() - 5
    ds = LlavaDataset.for_model(
        tiny_world.paths["dft"], tiny_world.paths["dft"].parent, student, teacher=teacher, max_length=cut_at
    )
    sample = ds[0]
    assert sample["input_ids"].numel() == cut_at
    own, theirs = sample["labels"], sample["teacher"]["labels"]
    assert own[own != -100].tolist() == theirs[theirs != -100].tolist()
    assert (own != -100).sum() < (uncut["labels"] != -100).sum()  # the cut went through the answers
    shift = teacher.num_image_tokens - student.num_image_tokens
    assert sample["teacher"]["input_ids"].numel() == cut_at + shift
    assert sample["teacher"]["input_ids"][-5:].tolist() == sample["input_ids"][-5:].tolist()


def test_vsd_reaches_the_student_encoder_and_the_adapter_and_nothing_of_the_teacher(tiny_world, siglip_teacher):
    distiller, student, teacher, _, batch = _pair(
        tiny_world, siglip_teacher, ce_weight=0.0, lambda_align=0.0, lambda_vsd=1.0
    )
    adapter = distiller.switch_adapter
    assert isinstance(adapter, SwitchAdapter)
    assert (adapter.in_dim, adapter.out_dim, adapter.in_grid, adapter.out_grid) == (32, 48, 4, 3)
    out = distiller(batch)
    assert out["vsd"] > 0 and out["total"] == out["vsd"]
    out["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.vision_tower.parameters())
    assert all(p.grad is None for p in student.projector.parameters())
    assert all(p.grad is None for p in student.llm.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # Align reads the teacher through its own prompt and pixels: finite and positive
    distiller.cfg = DistillConfig(ce_weight=1.0, lambda_align=1.0, lambda_vsd=1.0)
    out = distiller(batch)
    assert all(torch.isfinite(out[k]) and out[k] > 0 for k in ("ce", "align", "vsd"))
    diag = distiller.diagnostics(batch)
    assert {"grad_vision_ce", "grad_vision_align", "grad_vision_vsd", "feature_distance"} <= set(diag)


def test_the_adapter_kinds_and_resamplings(tiny_world, siglip_teacher):
    distiller, *_ = _pair(tiny_world, siglip_teacher, switch_adapter="mlp2x_gelu", switch_resample="pool")
    assert "pool" in repr(distiller.switch_adapter) and "mlp2x_gelu" in repr(distiller.switch_adapter)
    # hand-checked resampling: 4 x 4 -> 2 x 2 average pooling, and interpolation of a constant grid
    pool = SwitchAdapter(1, 1, in_grid=4, out_grid=2, resample="pool")
    with torch.no_grad():
        pool.map.weight.fill_(1.0)
        pool.map.bias.zero_()
    grid = torch.arange(16.0).reshape(1, 16, 1)
    assert pool(grid).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    interp = SwitchAdapter(2, 2, in_grid=4, out_grid=3)
    with torch.no_grad():
        interp.map.weight.copy_(torch.eye(2))
        interp.map.bias.zero_()
    const = torch.tensor([3.0, -1.0]).expand(1, 16, 2)
    torch.testing.assert_close(interp(const), torch.tensor([3.0, -1.0]).expand(1, 9, 2))
    with pytest.raises(ValueError, match="expects \\(B, 16, 2\\), got \\(1, 9, 2\\)"):
        interp(torch.zeros(1, 9, 2))


def test_a_heterogeneous_dft_run_trains_resumes_and_exports_without_the_adapter(tiny_world, siglip_teacher, tmp_path):
    def config(out, steps):
        cfg = {
            "model": {"pretrained": str(tiny_world.student)},
            "teacher": {"pretrained": str(siglip_teacher)},
            "data": {"train": str(tiny_world.paths["dft"]), "num_workers": 0, "length_grouped": False},
            "train": {
                "stage": "dft",
                "lr": 1e-3,
                "per_device_batch_size": 4,
                "max_steps": steps,
                "save_every": 2,
                "progress": False,
                "output_dir": str(out),
            },
        }
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(cfg))
        return load_config(path)

    full = train(config(tmp_path / "full", 4))
    assert all(h["vsd"] > 0 for h in full.history)
    with safe_open(str(checkpoints(tmp_path / "full")[-1] / "model.safetensors"), "pt") as f:
        assert any(k.startswith("switch_adapter.") for k in f.keys())
    final = VisionLanguageModel.from_pretrained(full.final_model)
    assert not any("adapter" in k for k in final.state_dict())
    index = json.loads((full.final_model / "config.json").read_text())
    assert "adapter" not in json.dumps(index)
    # as if killed after the step-2 checkpoint: resume gives the same curve and weights as the straight run
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    shutil.rmtree(tmp_path / "part" / "final")
    shutil.rmtree(checkpoints(tmp_path / "part")[-1])
    assert checkpoints(tmp_path / "part")[-1].name.endswith("-0000002")
    resumed = train(config(tmp_path / "part", 4), resume=True)
    assert [h["step"] for h in resumed.history] == [3, 4]  # from the step-2 checkpoint, not from 0
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[2:]]
    a = VisionLanguageModel.from_pretrained(resumed.final_model).state_dict()
    b = final.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_dry_run_names_the_adapter_and_refuses_a_mismatch_without_one(tiny_world, siglip_teacher, tmp_path):
    from switchkd.training.dry_run import dry_run

    cfg = {
        "model": {"pretrained": str(tiny_world.student)},
        "teacher": {"pretrained": str(siglip_teacher)},
        "data": {"train": str(tiny_world.paths["dft"])},
        "train": {"stage": "dft", "output_dir": str(tmp_path / "out")},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    text = dry_run(load_config(path))
    assert "switch adapter: 4x4 -> 3x3 (interpolate), 32 -> 48 (linear)" in text
    path.write_text(yaml.safe_dump(cfg | {"distill": {"switch_adapter": "none"}}))
    with pytest.raises(ValueError, match="student vision width 32 != teacher projector input 48; student vision"):
        dry_run(load_config(path))
