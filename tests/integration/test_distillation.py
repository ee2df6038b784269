"""The visual switch routes gradient exactly where the paper says, and the teacher never changes."""

import pytest
import torch
from torch.utils.data import DataLoader

from switchkd.config import DistillConfig
from switchkd.data.dataset import Collator, LlavaDataset
from switchkd.distillation import VisualSwitchDistiller
from switchkd.losses import LOSSES, DistillLoss
from switchkd.models import VisionLanguageModel


def _setup(world, **distill):
    student = VisionLanguageModel.from_pretrained(world.student)
    teacher = VisionLanguageModel.from_pretrained(world.teacher)
    loss = distill.pop("loss", "dbild_rkl")
    distiller = VisualSwitchDistiller(student, teacher, DistillConfig(loss=DistillLoss(loss), **distill)).train()
    ds = LlavaDataset.for_model(world.paths["dft"], world.paths["dft"].parent, student)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=Collator(student.tokenizer.pad_token_id))))
    return distiller, student, teacher, batch


def _grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


def test_vsd_only_step_moves_student_vision_and_nothing_else(tiny_world):
    distiller, student, teacher, batch = _setup(tiny_world, ce_weight=0.0, lambda_align=0.0, lambda_vsd=1.0)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    vision_before = {k: v.clone() for k, v in student.vision_tower.state_dict().items()}
    out = distiller(batch)
    assert out["vsd"] > 0 and out["total"] == out["vsd"]
    out["total"].backward()
    vision_grads = [g for g in _grads(student.vision_tower).values() if g is not None]
    assert vision_grads and sum(g.abs().sum() for g in vision_grads) > 0
    assert all(g is None for g in _grads(student.projector).values())
    assert all(g is None for g in _grads(student.llm).values())
    assert all(p.grad is None for p in teacher.parameters())
    torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=1.0).step()
    changed = [k for k, v in student.vision_tower.state_dict().items() if not torch.equal(v, vision_before[k])]
    assert changed
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_switch_off_gives_vision_no_distillation_gradient(tiny_world):
    distiller, student, teacher, batch = _setup(
        tiny_world, ce_weight=0.0, lambda_align=0.0, lambda_vsd=1.0, visual_switch=False
    )
    out = distiller(batch)
    assert out["vsd"] == 0
    assert not out["total"].requires_grad or out["total"] == 0
    if out["total"].requires_grad:
        out["total"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in student.vision_tower.parameters())
    # With the alignment term the student's own pathway does reach V^S.
    distiller, student, _, batch = _setup(tiny_world, ce_weight=0.0, lambda_align=1.0, visual_switch=False)
    distiller(batch)["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.vision_tower.parameters())


def test_teacher_stays_in_eval_mode_and_outside_the_module(tiny_world):
    distiller, _, teacher, _ = _setup(tiny_world)
    distiller.train()
    assert distiller.student.training and not teacher.training
    assert not any(p is q for p in distiller.parameters() for q in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())


def test_losses_are_named_and_consistent(tiny_world):
    distiller, *_, batch = _setup(tiny_world, lambda_align=0.5, lambda_vsd=2.0)
    out = distiller(batch)
    assert set(out) >= {"total", "ce", "align", "vsd", "k_teacher", "k_student"}
    torch.testing.assert_close(out["total"], out["ce"] + 0.5 * out["align"] + 2.0 * out["vsd"])
    assert out["k_teacher"] >= 2 and out["k_student"] >= 2


def test_mismatched_pairs_are_refused(tiny_world, tmp_path):
    from switchkd.demo.tokenizer import train_tokenizer
    from tests.conftest import CORPUS
    from tests.integration.conftest import world_model

    student = VisionLanguageModel.from_pretrained(tiny_world.student)
    wide = world_model(tiny_world.tokenizer, vision_width=48)
    with pytest.raises(ValueError, match="student vision width 32 != teacher projector input 48; set distill.switch"):
        VisualSwitchDistiller(student, wide, DistillConfig(switch_adapter="none"))
    assert VisualSwitchDistiller(student, wide, DistillConfig(visual_switch=False)).switch_adapter is None
    train_tokenizer(CORPUS, vocab_size=300, out_dir=tmp_path / "other")
    other = world_model(tmp_path / "other")
    with pytest.raises(ValueError, match="tokenizers differ"):
        VisualSwitchDistiller(student, other, DistillConfig())
    # Another image-token count is a teacher view of the data; a batch without it is one clear error.
    fewer = world_model(tiny_world.tokenizer, projector="ldpv2", projector_kwargs={"grid": 2})
    distiller = VisualSwitchDistiller(student, fewer, DistillConfig())
    ds = LlavaDataset.for_model(tiny_world.paths["dft"], tiny_world.paths["dft"].parent, student)
    batch = Collator(student.tokenizer.pad_token_id)([ds[0], ds[1]])
    fix = "LlavaDataset.for_model\\(records, root, student, teacher=teacher\\)"
    with pytest.raises(ValueError, match=f"own input_ids.*{fix}"):
        distiller(batch)


def _float64_batch(batch):
    return {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize("loss", ["fkl", "dbild_rkl"])
def test_chunked_equals_plain_and_all_ignored_is_zero(tiny_world, loss):
    """The loss head as training runs it: chunks of 3 rows against all rows at once (values and every
    gradient, float64); normalised by supervised tokens; an all-ignored batch gives 0."""
    distiller, student, _, batch = _setup(tiny_world, loss=loss)
    distiller.double()
    batch = _float64_batch(batch)
    outs, grads = [], []
    for chunk_rows in (None, 3):
        distiller.chunk_rows = chunk_rows
        distiller.zero_grad()
        out = distiller(batch)
        out["total"].backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    plain, chunked = outs
    assert int((batch["labels"][:, 1:] != -100).sum()) > 3  # several chunks
    for key in ("total", "ce", "align", "vsd", "k_teacher", "k_student"):
        assert chunked[key].item() == pytest.approx(plain[key].item(), rel=1e-12), key
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-10, atol=1e-12)
    # Normalised by supervised tokens: with num_items_in_batch the sum is divided by it instead.
    n = int((batch["labels"][:, 1:] != -100).sum())
    doubled = distiller(batch, num_items_in_batch=2 * n)
    for key in ("ce", "align", "vsd"):
        assert doubled[key].item() == pytest.approx(plain[key].item() / 2, rel=1e-12)
    ignored = dict(batch, labels=torch.full_like(batch["labels"], -100))
    assert distiller(ignored)["total"].item() == 0.0


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, True), (1.0, 0.5, 2.0, False), (0.0, 0.0, 1.0, True)])
def test_fused_head_equals_the_plain_graph_through_real_models(tiny_world, loss, weights):
    """The distiller as training runs it (fused head, chunks of 3 rows) against the plain autograd graph
    over all rows at once, in float64: every named value and the gradient of every student parameter
    (the vision tower's through the switch pathway, the tied LM head / embeddings included)."""
    ce_weight, lambda_align, lambda_vsd, switch = weights
    distiller, student, _, batch = _setup(
        tiny_world,
        loss=loss,
        ce_weight=ce_weight,
        lambda_align=lambda_align,
        lambda_vsd=lambda_vsd,
        visual_switch=switch,
    )
    distiller.double()
    batch = _float64_batch(batch)
    outs, grads = [], []
    for fused, chunk_rows in ((False, None), (True, 3)):
        distiller.fused, distiller.chunk_rows = fused, chunk_rows
        distiller.zero_grad()
        out = distiller(batch, num_items_in_batch=50)
        (4.0 * out["total"]).backward()
        outs.append({k: v.detach() for k, v in out.items()})
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    plain, fused = outs
    assert set(fused) == set(plain)
    for key, value in plain.items():
        assert fused[key].item() == pytest.approx(value.item(), rel=1e-10, abs=1e-14), key
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-9, atol=1e-12, msg=name)
    if lambda_vsd and switch:
        assert any(n.startswith("vision_tower") for n in grads[1])


def test_lm_objective_chunked_equals_plain(tiny_world):
    from switchkd.training.objectives import LanguageModelingObjective

    _, student, _, batch = _setup(tiny_world)
    objective = LanguageModelingObjective(student.double())
    batch = _float64_batch(batch)
    objective.fused = False
    plain = objective(batch)["ce"]
    plain.backward()
    expected = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()
    objective.fused, objective.chunk_rows = True, 2
    fused = objective(batch)["ce"]
    assert fused.item() == pytest.approx(plain.item(), rel=1e-12)
    fused.backward()
    for name, g in expected.items():
        torch.testing.assert_close(student.get_parameter(name).grad, g, rtol=1e-9, atol=1e-12, msg=name)


def test_moving_the_distiller_moves_and_casts_its_teacher(tiny_world):
    distiller, _, teacher, _ = _setup(tiny_world)
    distiller.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    assert not any(p is q for p in distiller.parameters() for q in teacher.parameters())


def test_teacher_checkpointing_recomputes_one_layer_at_a_time_with_the_same_gradients(tiny_world):
    """``teacher_checkpointing`` changes memory, never numbers; and backward recomputes the switch pathway's
    teacher layers last layer first, one at a time (one checkpoint around the whole pathway would rerun
    them first to last, all activations alive together)."""
    distiller, student, teacher, batch = _setup(tiny_world, ce_weight=0.0, lambda_align=0.0)
    distiller.double()
    batch = _float64_batch(batch)
    layers = [m for m in teacher.llm.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert len(layers) >= 2
    calls: list[int] = []
    for i, layer in enumerate(layers):
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.append(i))  # runs again on recompute
    results = []
    for on in (False, True):
        distiller.cfg.teacher_checkpointing = on
        distiller.zero_grad()
        out = distiller(batch)
        calls.clear()
        out["total"].backward()
        results.append(
            (
                out["vsd"].item(),
                {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None},
                list(calls),
            )
        )
    (plain_vsd, plain_grads, plain_calls), (vsd, grads, recomputed) = results
    assert plain_calls == []
    assert recomputed == list(range(len(layers)))[::-1]
    assert vsd == plain_vsd
    assert grads.keys() == plain_grads.keys() and any(n.startswith("vision_tower") for n in grads)
    for name, g in plain_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-12, atol=0, msg=name)
    assert all(p.grad is None for p in teacher.parameters())
    assert all("forward" not in vars(layer) for layer in layers)  # the per-layer wrapper is gone after the call
    # a forward set on the instance before (as accelerate's hooks do) is wrapped, then put back
    hooked = layers[0].forward
    layers[0].forward = hooked
    distiller(batch)["total"].backward()
    assert vars(layers[0])["forward"] is hooked
