"""Visual-switch distillation (paper Eqs. 1-6, supplement Algorithm 1).

    L = CE + λ1 · D(z^T, z^S) + λ2 · D(z^T, z^Switch),   z^Switch = L^T(P^T(V^S(x)))

The teacher is frozen and always in eval mode. ``z^T`` is computed under no_grad; the switch
pathway keeps its graph so that gradient flows through the frozen P^T and L^T into V^S only.
Logits are computed only at supervised positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from switchkd.losses import DistillLoss, cross_entropy_rows, supervised_positions
from switchkd.losses.bild import BiLDTerms


@dataclass
class DistillConfig:
    """The Switch-KD objective."""

    loss: str = "dbild_rkl"
    """Distillation loss by name: fkl, rkl, bild_fkl, bild_rkl, dbild_fkl, dbild_rkl (paper Table 4)."""
    temperature: float = 3.0
    """τ of the pair softmax (and of the KL losses)."""
    lambda_align: float = 1.0
    """λ1: weight of D(z^T, z^S), the standard alignment pathway."""
    lambda_vsd: float = 1.0
    """λ2: weight of D(z^T, z^Switch), the visual-switch pathway."""
    visual_switch: bool = True
    """Run the visual-switch pathway (paper Table 3 ablation when false)."""
    ce_weight: float = 1.0
    """Weight of the plain LM cross-entropy (temperature 1, see DESIGN.md)."""
    k: int = 8
    """Fixed k of the BiLD losses."""
    k_min: int = 2
    """Lower clamp of the knee k."""
    k_max: int | None = None
    """Upper clamp of the knee k (null: the paper's uncapped knee)."""
    knee: str = "fast"
    """Knee search: fast (exact, histogram-pruned) or sort (reference); identical results."""
    teacher_checkpointing: bool = False
    """Recompute the teacher's switch-pathway forward in backward instead of storing it."""

    def __post_init__(self) -> None:
        if min(self.lambda_align, self.lambda_vsd, self.ce_weight) < 0:
            raise ValueError("distill: loss weights must be >= 0")
        self.make_loss()  # validates the name and the options

    def make_loss(self) -> DistillLoss:
        return DistillLoss(self.loss, temperature=self.temperature, k=self.k, k_min=self.k_min, k_max=self.k_max,
                           knee=self.knee)


def check_pair(student, teacher) -> int:
    """Build-time checks of a teacher/student pair; returns the shared vocabulary size."""
    s_vocab, t_vocab = student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
    if s_vocab != t_vocab:
        only_s = len(set(s_vocab) - set(t_vocab))
        only_t = len(set(t_vocab) - set(s_vocab))
        raise ValueError(f"teacher and student tokenizers differ ({len(s_vocab)} vs {len(t_vocab)} tokens; "
                         f"{only_s} only in the student, {only_t} only in the teacher): Switch-KD needs one vocabulary")
    if student.image_token_id != teacher.image_token_id:
        raise ValueError(f"image token ids differ: student {student.image_token_id}, teacher {teacher.image_token_id}")
    if student.num_image_tokens != teacher.num_image_tokens:
        raise ValueError(f"image token counts differ: student {student.num_image_tokens}, teacher "
                         f"{teacher.num_image_tokens}; both pathways must see the same prompt")
    if student.vision_tower.hidden_size != teacher.projector.in_dim:
        raise ValueError(f"visual switch: student vision width {student.vision_tower.hidden_size} != teacher "
                         f"projector input {teacher.projector.in_dim}")
    switched = teacher.projector.num_output_tokens(student.vision_tower.num_tokens)
    if switched != teacher.num_image_tokens:
        raise ValueError(f"visual switch: the teacher projector makes {switched} tokens from the student's "
                         f"vision features, but the prompt holds {teacher.num_image_tokens}")
    if student.vision_tower.image_size != teacher.vision_tower.image_size:
        raise ValueError(f"image sizes differ: student {student.vision_tower.image_size}, teacher "
                         f"{teacher.vision_tower.image_size}; both encoders read the same pixels")
    # Logit rows may be padded differently (Qwen2.5-7B: 152,064; 0.5B-3B: 151,936): the tokenizer decides.
    return len(student.tokenizer)


class VisualSwitchDistiller(nn.Module):
    """Holds the student (a submodule, trained) and the teacher (not a submodule: frozen, never
    wrapped by DDP/FSDP/DeepSpeed, moved and cast separately)."""

    def __init__(self, student, teacher, cfg: DistillConfig):
        super().__init__()
        self.student = student
        self._teacher = [teacher]  # a list hides it from nn.Module registration
        self.cfg = cfg
        self.loss_fn = cfg.make_loss()
        self.vocab = check_pair(student, teacher)
        teacher.requires_grad_(False)
        teacher.eval()

    @property
    def teacher(self):
        return self._teacher[0]

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # dropout and the like stay off in the teacher, always
        return self

    def _switch_logits(self, features_s: torch.Tensor, batch, positions) -> torch.Tensor:
        teacher = self.teacher

        def run(feats):
            out = teacher(batch["input_ids"], batch["attention_mask"], image_features=teacher.projector(feats),
                          logits_at=positions)
            return out.logits[:, : self.vocab]

        if self.cfg.teacher_checkpointing:
            return checkpoint(run, features_s, use_reentrant=False)
        return run(features_s)

    def forward(self, batch: dict, num_items_in_batch: int | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named losses ``{total, ce, align, vsd}`` (sums over supervised tokens divided by
        ``num_items_in_batch``, default this batch's count) and diagnostics ``k_teacher``, ``k_student``.

        A term whose weight is 0 is not computed (and reported as 0): with only L_VSD on, the student's
        own projector and LLM do not even run, so they get no gradient at all.
        """
        cfg, student, teacher = self.cfg, self.student, self.teacher
        positions, targets = supervised_positions(batch["labels"])
        denom = num_items_in_batch if num_items_in_batch is not None else max(int(targets.numel()), 1)
        pixels = batch.get("pixel_values")
        features_s = student.vision_tower(pixels) if pixels is not None else None  # V^S(x), shared by both paths
        use_switch = cfg.visual_switch and cfg.lambda_vsd > 0 and features_s is not None
        zero = torch.zeros((), device=batch["labels"].device)
        out = {"ce": zero, "align": zero, "vsd": zero}

        s_rows = None
        if cfg.ce_weight > 0 or cfg.lambda_align > 0:
            image_s = student.projector(features_s) if features_s is not None else None
            s_rows = student(batch["input_ids"], batch["attention_mask"], image_features=image_s,
                             logits_at=positions).logits[:, : self.vocab]  # (M, V)
            out["ce"] = cross_entropy_rows(s_rows, targets, reduction="sum") / denom
        if cfg.lambda_align > 0 or use_switch:
            with torch.no_grad():
                t_rows = teacher(batch["input_ids"], batch["attention_mask"], pixel_values=pixels,
                                 logits_at=positions).logits[:, : self.vocab]
            teacher_sel = self.loss_fn.select_teacher(t_rows)  # shared by the Align and VSD terms
            if cfg.lambda_align > 0:
                align = self.loss_fn.terms(s_rows, t_rows, teacher_sel)
                out["align"] = _sum(align) / denom
                out.update(_diagnostics(align))
            if use_switch:
                switch = self.loss_fn.terms(self._switch_logits(features_s, batch, positions), t_rows, teacher_sel)
                out["vsd"] = _sum(switch) / denom
                if "k_teacher" not in out:
                    out.update(_diagnostics(switch))
        out["total"] = cfg.ce_weight * out["ce"] + cfg.lambda_align * out["align"] + cfg.lambda_vsd * out["vsd"]
        return out


def _sum(terms: BiLDTerms | torch.Tensor) -> torch.Tensor:
    return (terms.loss if isinstance(terms, BiLDTerms) else terms).sum()


def _diagnostics(terms: BiLDTerms | torch.Tensor) -> dict[str, torch.Tensor]:
    if not isinstance(terms, BiLDTerms) or terms.k_teacher.numel() == 0:
        return {}
    return {"k_teacher": terms.k_teacher.float().mean(), "k_student": terms.k_student.float().mean()}
