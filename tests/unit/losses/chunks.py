"""The distiller's chunk function for loss-head tests: CE, Align and VSD over one chunk of logits, the
teacher's selection shared by both DBiLD terms (the composition of ``VisualSwitchDistiller``)."""

from switchkd.losses import DistillLoss, cross_entropy_rows


def distiller_chunk_loss(loss: DistillLoss, targets, *, student: bool = True, switch: bool = True, align: bool = True):
    """``fn(logits, rows) -> sums``: CE of the student (``student``), Align with the knee sizes
    (``align``), VSD of the switch pathway (``switch``)."""

    def fn(logits, rows):
        out = {}
        if student:
            out["ce"] = cross_entropy_rows(logits["student"], targets[rows], reduction="sum")
        t = logits["teacher"].detach()
        sel = loss.select(t)
        if align:
            r = loss.rows(logits["student"], t, sel)
            out |= {"align": r.loss.sum(), "k_teacher": r.k_teacher.sum(), "k_student": r.k_student.sum()}
        if switch:
            out["vsd"] = loss.rows(logits["switch"], t, sel).loss.sum()
        return out

    return fn
