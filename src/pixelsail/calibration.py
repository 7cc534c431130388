"""Exact statistics for the [SEG] query's standardisation, for checkpoints taken in the middle of a run.

With ``seg_query_norm`` the mask query standardises each [SEG] state per channel: with the batch's statistics while
training and with BatchNorm's running averages otherwise. Those averages are exponential over the last ~10 batches
(momentum 0.1), and length-grouped batches hold one or two tasks each, so mid-run they describe whichever tasks
came last. Where the [SEG] states vary little this decides everything: on a 3000-step checkpoint of the shapes
recipe (distillation weight 5, running variance 0.006 per channel) the teacher-forced probability of the referred
object was 0.003 with the running statistics and 0.73 with the exact ones of 32 training batches of the mix
(``pixelsail calibrate``). A *finished* run is different: at the end of the cosine schedule the running averages
have settled, and the model learned with per-batch (mostly per-task) statistics, so one pooled estimate over the
mix is a compromise: on the two finished session-9 runs it changed referring cIoU by -0.4 and -7.9 points and
generalised cIoU by -6.6 and -11.4 (docs/TRAINING.md, session 9). The engine therefore exports the running
statistics as they are; this module is for probing checkpoints.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

DEFAULT_BATCHES = 32


def query_norm(model: nn.Module) -> nn.BatchNorm1d | None:
    seg_query = getattr(model, "seg_query", None)
    return getattr(seg_query, "norm", None)


@torch.no_grad()
def calibrate_query_norm(model: nn.Module, batches: Iterable[dict[str, Any]], *, device: torch.device | str = "cpu",
                         autocast: Any = None, max_batches: int = DEFAULT_BATCHES) -> int:
    """Set the [SEG] standardisation's running mean/variance to the exact ones of the [SEG] states of ``batches``
    (collated training batches; at most ``max_batches``). Returns the number of [SEG] states used (0: the model has
    no such standardisation, or the batches have no [SEG]; the statistics are then left as they were).

    Under torch.distributed every rank must call this (a sharded model's forward gathers its weights); the sums
    are added over the ranks.
    """
    import torch.distributed as dist

    norm = query_norm(model)
    if norm is None:
        return 0
    width = norm.running_mean.numel()
    sums = torch.zeros(2 * width + 1, dtype=torch.float64, device=norm.running_mean.device)  # [count, sum, sum sq]

    def capture(_module: nn.Module, args: tuple) -> None:
        states = args[0].detach().double()                        # (M, width), what the standardisation sees
        sums[0] += states.shape[0]
        sums[1:1 + width] += states.sum(0)
        sums[1 + width:] += (states * states).sum(0)

    handle = model.seg_query.register_forward_pre_hook(capture)
    was_training = model.training
    model.eval()
    try:
        for k, batch in enumerate(batches):
            if k >= max_batches:
                break
            moved = {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
            with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
                model(**moved)
    finally:
        handle.remove()
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    count = float(sums[0])
    if count < 2:
        return int(count)
    mean = sums[1:1 + width] / count
    var = ((sums[1 + width:] - count * mean * mean) / (count - 1)).clamp_min(0.0)  # unbiased, as BatchNorm keeps it
    norm.running_mean.copy_(mean.to(norm.running_mean.dtype))
    norm.running_var.copy_(var.to(norm.running_var.dtype))
    return int(count)


__all__ = ["DEFAULT_BATCHES", "calibrate_query_norm", "query_norm"]
