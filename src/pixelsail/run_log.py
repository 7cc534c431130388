"""What a training run reports while it runs: ``metrics.jsonl`` (and TensorBoard), the loss curves picture, and
the per-interval loss averages behind each log line."""
from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from pixelsail.train import DistEnv

log = logging.getLogger("pixelsail.train")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class MetricsLog:
    """``metrics.jsonl`` (one record per log step) and, when installed and asked for, TensorBoard."""

    def __init__(self, output_dir: Path, resume_step: int | None, tensorboard: bool):
        self.path = output_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():   # forget steps logged after the checkpoint we resume from
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                log.warning("train.tensorboard is on but the tensorboard package is not installed; skipping it")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_loss_curves(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not records:
        return
    steps = [r["step"] for r in records]
    names = ["loss"] + sorted({k[len("loss/"):] for r in records for k in r if k.startswith("loss/")})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in names:
        key = "loss" if name == "loss" else f"loss/{name}"
        ax.plot(steps, [r.get(key, float("nan")) for r in records], label=name, lw=2 if name == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in records], color="grey", ls="--", lw=1, label="lr (right axis)")
    lr_ax.set_ylabel("lr")
    handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


class LossInterval:
    """Loss sums since the last log step, averaged over micro-steps and then over ranks when logged."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def record(self, env: DistEnv, *, step: int, lr: float, grad_norm: torch.Tensor, global_batch: int,
               epoch: int, time_s: float) -> dict[str, Any]:
        """The metrics line of a log step (collective when distributed)."""
        losses, rss = self.reduce(env)
        elapsed = time.perf_counter() - self.start
        if hasattr(grad_norm, "full_tensor"):    # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        record = {"step": step, **losses, "lr": lr, "grad_norm": float(grad_norm),
                  "samples_per_s": self.steps * global_batch / max(elapsed, 1e-9), "peak_rss_mb": rss,
                  "epoch": epoch, "time_s": time_s}
        if env.device.type == "cuda":
            record["peak_gpu_mb"] = torch.cuda.max_memory_allocated(env.device) / 2**20
        return record

    def reduce(self, env: DistEnv) -> tuple[dict[str, float], float]:
        """Mean of each loss over micro-steps of all ranks; peak RSS (MB) over ranks."""
        local = (self.sums, self.counts, peak_rss_mb())
        gathered = [local]
        if env.distributed:
            gathered = [None] * env.world_size
            dist.all_gather_object(gathered, local)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for s, c, _ in gathered:
            for k in s:
                sums[k] = sums.get(k, 0.0) + s[k]
                counts[k] = counts.get(k, 0) + c[k]
        return {k: sums[k] / counts[k] for k in sums}, max(g[2] for g in gathered)
