"""Visual-switch distillation (paper Eqs. 1-6, supplement Algorithm 1).

    L = CE + λ1 · D(z^T, z^S) + λ2 · D(z^T, z^Switch),   z^Switch = L^T(P^T(V^S(x)))

The teacher is frozen and always in eval mode. ``z^T`` is computed under no_grad; the switch
pathway keeps its graph so that gradient flows through the frozen P^T and L^T into V^S only.
Logits are computed only at supervised positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from switchkd.config import DistillConfig
from switchkd.data.dataset import image_inputs, teacher_view, teacher_view_of
from switchkd.diagnostics import encoder_distance, gradient_norm
from switchkd.distillation.adapter import SwitchAdapter, grid_side
from switchkd.losses import LossRows, cross_entropy_rows, loss_head, per_token, supervised_positions


def check_pair(student, teacher) -> int:
    """Build-time checks of a teacher/student pair; returns the shared vocabulary size.

    The pair must be of one family (``models.pathway``) and share one vocabulary and one image token.
    In the LLaVA-style family everything else may differ: image sizes and processors (each model reads
    the image its own way), image-token counts (each gets its own prompt; the collator carries both
    versions), vision widths and grids (the switch adapter). A family that reads each image at its own
    size (Qwen2.5-VL's patches, LLaVA-OneVision's crops) must read it alike in both models: the student's
    features are what the teacher's projector and LLM see, one to one."""
    if student.family != teacher.family:
        raise ValueError(
            f"teacher is a {teacher.family} model and student a {student.family} one: Switch-KD pairs one "
            "family (the switch feeds the student's vision features into the teacher's projector, and both "
            "prompts must place the image the same way); pick a teacher and a student of one family"
        )
    s_vocab, t_vocab = student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
    if s_vocab != t_vocab:
        only_s = len(set(s_vocab) - set(t_vocab))
        only_t = len(set(t_vocab) - set(s_vocab))
        raise ValueError(
            f"teacher and student tokenizers differ ({len(s_vocab)} vs {len(t_vocab)} tokens; "
            f"{only_s} only in the student, {only_t} only in the teacher): Switch-KD needs one vocabulary"
        )
    if student.image_token_id != teacher.image_token_id:
        raise ValueError(
            f"image token ids differ: student {student.image_token_id}, teacher {teacher.image_token_id}; "
            "both prompts must mark the image with the same token"
        )
    if student.num_image_tokens is None and student.image_reader.settings() != teacher.image_reader.settings():
        differ = sorted(
            k
            for k in student.image_reader.settings().keys() | teacher.image_reader.settings().keys()
            if student.image_reader.settings().get(k) != teacher.image_reader.settings().get(k)
        )
        raise ValueError(
            f"teacher and student read images differently ({', '.join(differ)} differ): each image is read at its "
            "own size, and the student's features go through the teacher's projector as they are; give both the "
            "same image_processor settings"
        )
    # Logit rows may be padded differently (Qwen2.5-7B: 152,064; 0.5B-3B: 151,936): the tokenizer decides.
    return len(student.tokenizer)


def switch_adapter(student, teacher, cfg: DistillConfig) -> SwitchAdapter | None:
    """The adapter the switch pathway needs (or was asked for), or None; refuses a mismatched pair
    without one, with the reason."""
    if not (cfg.visual_switch and cfg.lambda_vsd > 0):
        return None
    if student.num_image_tokens is None:  # dynamic resolution: one grid per image, read alike by both
        s_dim, t_dim = student.vision_tower.hidden_size, teacher.vision_tower.hidden_size
        if s_dim != t_dim:
            raise ValueError(
                f"visual switch: student vision width {s_dim} != the teacher merger's input {t_dim}; "
                f"the switch adapter maps square fixed grids only, not {student.family}'s per-image grids"
            )
        return None
    s_dim, t_dim = student.vision_tower.hidden_size, teacher.projector.in_dim
    s_tokens, t_tokens = student.vision_tower.num_tokens, teacher.vision_tower.num_tokens
    differ = []
    if s_dim != t_dim:
        differ.append(f"student vision width {s_dim} != teacher projector input {t_dim}")
    if s_tokens != t_tokens:
        differ.append(f"student vision tokens {s_tokens} != the teacher's {t_tokens}")
    kind = cfg.switch_adapter
    if kind == "auto":
        kind = "linear" if differ else "none"
    if kind == "none":
        if differ:
            raise ValueError(
                f"visual switch: {'; '.join(differ)}; set distill.switch_adapter to auto, linear or "
                "mlp2x_gelu to map one onto the other"
            )
        return None
    in_grid, out_grid = grid_side(s_tokens, "student"), grid_side(t_tokens, "teacher")
    return SwitchAdapter(s_dim, t_dim, in_grid=in_grid, out_grid=out_grid, kind=kind, resample=cfg.switch_resample)


class VisualSwitchDistiller(nn.Module):
    """Holds the student (a submodule, trained) and the teacher (frozen; not a submodule, so never
    wrapped by DDP or DeepSpeed and not in the state dict, except under FSDP2, which shards it with the
    student: ``hold_teacher``). Moving or casting the distiller (``.to(device)``, ``.bfloat16()``) moves
    and casts the teacher with it."""

    def __init__(
        self, student, teacher, cfg: DistillConfig, *, chunk_rows: int | None = None, fused: bool = True, compiled=False
    ):
        super().__init__()
        self.student = student
        self._teacher = [teacher]  # a list hides it from nn.Module registration
        self.cfg = cfg
        self.chunk_rows = chunk_rows
        self.fused = fused
        self.compiled = compiled
        check_pair(student, teacher)  # one vocabulary: both heads' logits are sliced to the same width
        self.switch_adapter = switch_adapter(student, teacher, cfg)
        view = teacher_view_of(student, teacher)
        self._needs = (
            ()
            if view is None
            else tuple(
                key
                for key, differs in (("input_ids", view.num_image_tokens), ("pixel_values", view.images))
                if differs is not None
            )
        )
        if self.switch_adapter is not None:
            self.switch_adapter.to(device=student.device, dtype=next(student.parameters()).dtype)
        teacher.requires_grad_(False)
        teacher.eval()

    terms = ("ce", "align", "vsd")
    """The loss terms ``forward`` returns beside ``total``: CE, Align = D(z^T, z^S), VSD = D(z^T, z^Switch)."""

    @property
    def teacher(self):
        return self._teacher[0]

    def weights(self) -> dict[str, float]:
        """Each term's weight in L (a term of weight 0 is not computed)."""
        cfg = self.cfg
        return {"ce": cfg.ce_weight, "align": cfg.lambda_align, "vsd": cfg.lambda_vsd if cfg.visual_switch else 0.0}

    def hold_teacher(self) -> None:
        """Make the teacher a submodule (``held_teacher``), for an engine that must see every parameter
        the forward uses: FSDP2 shards and gathers the teacher's parameters with the student's. It then
        appears in the state dict; it stays frozen and in eval mode."""
        self.add_module("held_teacher", self.teacher)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # dropout and the like stay off in the teacher, always
        return self

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if "held_teacher" not in self._modules:  # a held teacher was placed with the other submodules
            self.teacher._apply(fn, recurse)  # every wrapper that places the module places the teacher too
        return self

    def forward(self, batch: dict, num_items_in_batch: int | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named losses ``{total, ce, align, vsd}`` (sums over supervised tokens divided by
        ``num_items_in_batch``, default this batch's count) and diagnostics ``k_teacher``, ``k_student``.

        A term whose weight is 0 is not computed (and reported as 0): with only L_VSD on, the student's
        own projector and LLM do not even run, so they get no gradient at all. The loss head
        (``losses/head.py``) turns the pathways' hidden states into loss sums one chunk of rows at a time;
        with ``fused`` (the default) only ``total`` carries a gradient, and no logits outlive their chunk.
        """
        missing = [key for key in self._needs if key not in (batch.get("teacher") or {})]
        if missing and batch.get("input_ids") is not None:
            raise ValueError(
                f"the teacher reads this data otherwise (its own {' and '.join(missing)}), but the batch has no "
                "teacher view: build the dataset with LlavaDataset.for_model(records, root, student, teacher=teacher)"
            )
        positions, targets = supervised_positions(batch["labels"])
        images = image_inputs(batch)
        features = self.student.encode_vision(**images) if images else None  # V^S(x), both paths
        hidden = self._hidden_states(batch, positions, features, targets)
        if not hidden:  # every term is off
            return self._named_losses(torch.zeros((), device=self.student.device), {}, targets.numel(), None)
        heads = {"student": self.student.lm_head, "teacher": self.teacher.lm_head, "switch": self.teacher.lm_head}
        total, sums = loss_head(
            {name: (h, heads[name]) for name, h in hidden.items()},
            partial(self._chunk_sums, targets),
            self.weights(),
            vocab=self.student.vocab_size,
            chunk_rows=self.chunk_rows,
            fused=self.fused,
            compiled=self.compiled,
        )
        return self._named_losses(total, sums, targets.numel(), num_items_in_batch)

    def diagnostics(self, batch: dict) -> dict[str, float]:
        """What moves the student's encoder V^S, on one batch: the gradient norm that each weighted term
        (CE, Align, VSD) alone sends into the vision tower's trainable parameters (``grad_vision_<term>``),
        and the relative distance ``||V^S(x) - V^T(x)|| / ||V^T(x)||`` of the two encoders' features.
        One extra forward and backward per term; no parameter's ``.grad`` changes."""
        pixels = batch.get("pixel_values")
        params = [p for p in self.student.vision_tower.parameters() if p.requires_grad]
        if pixels is None:
            return {}
        out = {}
        cfg = self.cfg
        for term, weight in self.weights().items():
            if weight == 0 or not params:
                continue
            self.cfg = replace(cfg, **{k: (weight if t == term else 0.0) for t, k in _WEIGHT_KEYS.items()})
            try:
                total = self(batch)["total"]
            finally:
                self.cfg = cfg
            out[f"grad_vision_{term}"] = gradient_norm(total, params)
        distance = encoder_distance(
            self.student,
            self.teacher,
            student_images=image_inputs(batch),
            teacher_images=image_inputs(teacher_view(batch)),
            adapter=self.switch_adapter,
        )
        if distance is not None:
            out["feature_distance"] = distance
        return out

    def _hidden_states(
        self, batch: dict, positions: torch.Tensor, features, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Final hidden states (M, H) at the supervised positions of each pathway that a term needs. The
        teacher's pathways read the batch's teacher view (its own prompt and pixels, where they differ);
        its supervised rows must be the student's, one to one."""
        cfg, student, teacher = self.cfg, self.student, self.teacher
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = {}
        if cfg.ce_weight > 0 or cfg.lambda_align > 0:
            images = image_inputs(batch)
            image = student.project(features, images) if features is not None else None
            shapes = {k: v for k, v in images.items() if k != "pixel_values"}  # what the positions need
            out["student"] = student(ids, mask, image_features=image, logits_at=None, **shapes)
            out["student"] = out["student"].last_hidden_state[positions]
        if cfg.lambda_align > 0 or self._uses_switch(features):
            view = teacher_view(batch)
            t_positions = positions
            if view["labels"] is not batch["labels"]:
                t_positions, t_targets = supervised_positions(view["labels"])
                if not torch.equal(t_targets, targets):
                    raise ValueError(
                        "the teacher's prompt supervises other tokens than the student's "
                        f"({t_targets.numel()} vs {targets.numel()} rows): both views must tokenize one conversation"
                    )
            with torch.no_grad():
                out["teacher"] = teacher(
                    view["input_ids"], view["attention_mask"], **image_inputs(view), logits_at=None
                ).last_hidden_state[t_positions]
            if self._uses_switch(features):
                out["switch"] = self._switch_hidden(features, view, t_positions)
        return out

    def _uses_switch(self, features) -> bool:
        return self.cfg.visual_switch and self.cfg.lambda_vsd > 0 and features is not None

    def _switch_hidden(self, features: torch.Tensor, batch: dict, positions: torch.Tensor) -> torch.Tensor:
        """z^Switch's hidden states: the student's vision features through the frozen P^T and L^T."""
        teacher = self.teacher

        images = image_inputs(batch)
        shapes = {k: v for k, v in images.items() if k != "pixel_values"}  # the images' own shapes, if any

        def run(feats):
            if self.switch_adapter is not None:
                feats = self.switch_adapter(feats)
            out = teacher(
                batch["input_ids"],
                batch["attention_mask"],
                image_features=teacher.project(feats, images),
                logits_at=None,
                **shapes,
            )
            return out.last_hidden_state[positions]

        if self.cfg.teacher_checkpointing:
            with _layers_checkpointed(teacher.llm):
                return run(features)
        return run(features)

    def _chunk_sums(self, targets: torch.Tensor, logits: dict, rows: slice) -> dict[str, torch.Tensor]:
        """Loss sums over one chunk of rows, from its logits ``{pathway: (m, V)}``; the teacher's
        selection is shared by Align and VSD."""
        loss, out = self.cfg.loss, {}
        if "student" in logits:
            out["ce"] = cross_entropy_rows(logits["student"], targets[rows], reduction="sum")
        if "teacher" in logits:
            t_rows = logits["teacher"].detach()
            t_sel = loss.select(t_rows)
            if self.cfg.lambda_align > 0:
                out |= _sums("align", loss.rows(logits["student"], t_rows, t_sel), with_k=True)
            if "switch" in logits:
                switch = loss.rows(logits["switch"], t_rows, t_sel)
                out |= _sums("vsd", switch, with_k="k_teacher" not in out)
        return out

    def _named_losses(self, total, sums: dict, num_rows: int, num_items_in_batch) -> dict[str, torch.Tensor]:
        zero = torch.zeros((), device=self.student.device)
        out = {key: per_token(sums[key], num_rows, num_items_in_batch) if key in sums else zero for key in self.terms}
        if num_rows and "k_teacher" in sums:
            out.update({key: sums[key].float() / num_rows for key in ("k_teacher", "k_student")})
        out["total"] = per_token(total, num_rows, num_items_in_batch)
        return out


def _sums(term: str, rows: LossRows, with_k: bool) -> dict[str, torch.Tensor]:
    """A term's loss summed over rows; with ``with_k``, also the summed knee sizes (for their mean)."""
    out = {term: rows.loss.sum()}
    if with_k:
        out.update(k_teacher=rows.k_teacher.sum(), k_student=rows.k_student.sum())
    return out


_WEIGHT_KEYS = {"ce": "ce_weight", "align": "lambda_align", "vsd": "lambda_vsd"}


@contextmanager
def _layers_checkpointed(model: nn.Module) -> Iterator[None]:
    """Inside the block, each decoder layer of ``model`` runs under non-reentrant activation checkpointing.

    transformers checkpoints a layer only in training mode, and the teacher stays in eval mode. One
    checkpoint around the whole pathway would store nothing in forward but every layer's activations at
    once when backward recomputes it (all 36 layers of a 3B teacher, beside the student's gradients):
    per layer, only one layer's activations are alive in backward, for the same recompute FLOPs."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    # a forward already set on the instance (accelerate's hooks put one there) is wrapped and put back
    before = [vars(layer).get("forward") for layer in layers]
    for layer in layers:
        layer.forward = partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer, forward in zip(layers, before, strict=True):
            if forward is None:
                del layer.forward  # the instance attribute; the class's forward is back
            else:
                layer.forward = forward
