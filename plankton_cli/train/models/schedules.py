"""Per-step learning-rate schedules that keep every parameter group's own learning rate.

Layer-wise lr decay only works if each group's lr already is ``base_lr × lr_scale``:
``LambdaLR`` multiplies each group's *initial* lr by the factor, so groups stay in
proportion at every step. timm's ``lr_scale`` key alone is ignored by torch and
Lightning schedulers, which is why ``warmup_cosine_scheduler`` refuses groups that carry
different ``lr_scale`` values but one shared lr. Step the scheduler once per optimizer
step (Lightning: ``{"scheduler": s, "interval": "step"}``).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """lr factor at ``step``: linear warmup from 0, then half-cycle cosine to ``min_factor``.

    Same curve as MAE's ``util/lr_sched.py`` (which it evaluates per iteration); the
    factor stays at ``min_factor`` after ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: Optimizer, total_steps: int, warmup_steps: int, min_factor: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine` to every group's own initial lr."""
    groups = optimizer.param_groups
    scales = {g.get("lr_scale", 1.0) for g in groups}
    lrs = {g.get("initial_lr", g["lr"]) for g in groups}
    if len(scales) > 1 and len(lrs) == 1:
        raise ValueError(
            "parameter groups have different lr_scale but the same lr: set each group's "
            "lr = base_lr * lr_scale (classifier.layer_decay_param_groups does) before scheduling"
        )

    def factor(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps, min_factor)

    return LambdaLR(optimizer, lr_lambda=factor)
