"""One training loop for one CPU process or N processes under ``torchrun`` (DDP or FSDP2).

``train(run, resume=...)`` builds the model and the data stream, then repeats: ``grad_accum`` micro-batches ->
clip -> AdamW -> warm-up/cosine schedule. It writes into ``run.train.output_dir``::

    run.yaml                the resolved RunConfig
    metrics.jsonl           one line per log step: every loss component, lr, samples/s, peak memory
    checkpoints/step-N/     model/ (safetensors), optimizer.pt, rng_rank{r}.pt, trainer_state.json (written last)
    model/                  the final model (at normal completion)
    loss_curves.png         the loss curves (at exit)

Checkpoints (:mod:`pixelsail.checkpoints`) are written to a temporary directory, fsynced and renamed, so a crash
never leaves a half-written ``step-N``; ``resume=True`` continues from the newest one: same weights, optimizer,
schedule, data position and RNG states, hence (in fp32 on CPU) the same loss curve as a run that was never
interrupted. What the run reports (metrics.jsonl, the loss picture) is :mod:`pixelsail.run_log`.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator

import torch
import torch.distributed as dist
from torch import nn

from pixelsail.checkpoints import (latest_checkpoint, load_checkpoint, publish, save_checkpoint, save_model_dir,
                                   seed_all, state_dict_options)
from pixelsail.config import RunConfig, TrainConfig, save_yaml
from pixelsail.hardware import autocast_dtype
from pixelsail.data.mixture import BatchStream, Mixture, MixtureSampler, SamplerState, micro_batches
from pixelsail.run_log import LossInterval, MetricsLog, peak_rss_mb, plot_loss_curves

log = logging.getLogger("pixelsail.train")

# samples per rank sorted by length together (a window of steps); bounds the processed samples held in memory
GROUP_SAMPLES = 64


# ---------------------------------------------------------------------------------------------------------------
# processes and devices


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed() -> DistEnv:
    """Join the ``torchrun`` process group if launched by it (nccl on GPU, gloo on CPU); else one process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistEnv(rank, world, local, device)


def leave_distributed() -> None:
    """Tear the ``torchrun`` process group down before the interpreter exits (no-op in one process). Left to
    exit-time destructors, gloo's threads sometimes abort a rank ("terminate called without an active exception",
    seen under load): objects still holding collective work (a sharded model in a reference cycle) are collected
    first, and the ranks leave together. Callers drop their own references to a sharded model before calling."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv, parallel: str) -> nn.Module:
    """DDP or FSDP2 when distributed; the model itself otherwise. FSDP2 shards ``model`` in place."""
    if not env.distributed:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        # the model keeps every parameter in the graph of every batch (PixelSail adds 0 * sum(params))
        return DistributedDataParallel(model, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        from pixelsail.distributed import shard_model

        # one FSDP unit per decoder layer, then the root (see pixelsail.distributed for what goes where)
        return shard_model(model, init_device_mesh(env.device.type, (env.world_size,)))
    raise ValueError(f"train.parallel must be 'ddp' or 'fsdp', got {parallel!r}")


def _grad_sync(wrapped: nn.Module, sync: bool):
    """Context for one micro-step: skip the gradient all-reduce on all but the last micro-step."""
    if hasattr(wrapped, "no_sync"):                       # DDP
        return nullcontext() if sync else wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):    # FSDP2
        wrapped.set_requires_gradient_sync(sync)
    return nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# optimisation


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, *,
                    backbone_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases (every tensor with < 2 dims) and embedding tables. With
    ``backbone_lr`` the decoder transformer's own parameters (``model.backbone``: token embeddings, layers, final
    norm) learn at that rate and the modules around it (patch embedding, mask features, [SEG] query, ...) at ``lr``."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    in_backbone: set[int] = set()
    if backbone_lr is not None:
        if not hasattr(model, "backbone"):
            raise ValueError(f"backbone_lr is set but {type(model).__name__} has no .backbone")
        in_backbone = {id(p) for p in model.backbone.parameters()}
    # (weight decay, lr) -> parameters; the decayed group first, as checkpoints written before backbone_lr expect
    groups: dict[tuple[float, float], list] = {(weight_decay, lr): [], (0.0, lr): []}
    for p in model.parameters():
        if p.requires_grad:
            decays = p.ndim >= 2 and id(p) not in embedding_params
            rate = backbone_lr if id(p) in in_backbone else lr
            groups.setdefault((weight_decay if decays else 0.0, rate), []).append(p)
    params = [p for ps in groups.values() for p in ps]
    # the fused kernel: one pass over all parameters (on a 2-core CPU 3.7x faster than the per-tensor loop)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    param_groups = [{"params": ps, "weight_decay": wd, "lr": rate} for (wd, rate), ps in groups.items() if ps]
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), fused=fused or None)


@torch.no_grad()
def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter its (zero) AdamW state now, with one zero-gradient step at lr 0.

    torch.distributed.checkpoint does this to a fresh optimizer when a run resumes; doing it at the start too
    keeps a parameter that first gets a gradient late (the mask head after a text-only warm-up) on the same
    bias-correction count in a resumed run as in one that never stopped.
    """
    lrs = [g["lr"] for g in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


def lr_factor(step: int, max_steps: int, warmup_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up, then cosine to 0."""
    warmup = max(1, math.ceil(warmup_ratio * max_steps)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------------------------
# the loop


class _StopRequest:
    """SIGTERM / first Ctrl-C ask the loop to save and stop after the current step (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:   # not the main thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, env: DistEnv) -> bool:
        """True on every rank if any rank was asked to stop (ranks must leave the loop at the same step)."""
        if not env.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())



def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _forward_backward(wrapped: nn.Module, batches: list[dict[str, Any]], device: torch.device, autocast: Any,
                      interval: LossInterval, step: int) -> None:
    """Accumulate the gradients of one step's micro-batches (gradients are synchronised on the last one)."""
    for a, mb in enumerate(batches):
        with _grad_sync(wrapped, a == len(batches) - 1):
            with autocast:
                out = wrapped(**_to_device(mb, device))
            (out.loss / len(batches)).backward()
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {step}, micro-batch {a}: the loss is {loss} ({_named(out.losses)}); "
                                     f"lower train.lr or check the data")
        interval.add("loss", loss)
        for name, value in (out.losses or {}).items():
            interval.add(f"loss/{name}", float(value))


def _named(losses: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in (losses or {}).items())


def _default_build(run: RunConfig) -> nn.Module:
    from pixelsail.model import build_model

    return build_model(run.model, init_from=run.train.init_from, tokenizer=run.train.tokenizer)


@dataclass
class TrainSummary:
    output_dir: str
    steps: int
    final_loss: float | None
    samples_per_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    wall_s: float
    checkpoint: str | None
    stopped_early: bool
    losses: dict[str, float] = field(default_factory=dict)


def _checked_train_config(tc: TrainConfig) -> TrainConfig:
    """Values no dataclass type can check: the precision name and positive counts."""
    if tc.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision must be 'auto', 'bf16' or 'fp32', got {tc.precision!r}")
    if min(tc.max_steps, tc.batch_size, tc.grad_accum, tc.log_every) < 1:
        raise ValueError("train.max_steps, train.batch_size, train.grad_accum and train.log_every must be >= 1")
    return tc


def train(run: RunConfig, *, resume: bool, build: Callable[[RunConfig], nn.Module] | None = None,
          keep_last: int = 2) -> TrainSummary:
    """Train ``run`` (see the module docstring); ``build(run)`` makes the model (default: ``build_model``)."""
    run = replace(run, train=_checked_train_config(run.train))
    tc = run.train
    env = init_distributed()
    out_dir = Path(tc.output_dir)
    ckpt = latest_checkpoint(out_dir) if resume else None
    if not resume and latest_checkpoint(out_dir) is not None:
        raise FileExistsError(f"{out_dir} already holds checkpoints; pass --resume to continue it or choose "
                              f"another train.output_dir")
    env.barrier()
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(run, out_dir / "run.yaml")

    seed_all(tc.seed)                      # identical initial weights on every rank
    model = (build or _default_build)(run)
    processor = model.processor
    if tc.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    model.to(env.device)
    sharded = env.distributed and tc.parallel == "fsdp"
    wrapped = wrap_model(model, env, tc.parallel)
    model.train()
    optimizer = build_optimizer(model, tc.lr, tc.betas, tc.weight_decay, backbone_lr=tc.backbone_lr)
    init_optimizer_state(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.max_steps, tc.warmup_ratio))
    seed_all(tc.seed + 1000 * env.rank + 1)

    global_batch = tc.batch_size * env.world_size * tc.grad_accum
    start_step, sampler_state = 0, SamplerState()
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, wrapped, optimizer, scheduler, env)
        if state["global_batch"] != global_batch:
            raise ValueError(f"{ckpt}: saved with global batch {state['global_batch']}, this run has "
                             f"{global_batch} (batch_size x world_size x grad_accum); they must match to resume")
        start_step, sampler_state = state["step"], SamplerState(state["epoch"], state["epoch_step"])
        if state.get("max_steps", tc.max_steps) != tc.max_steps and env.is_main:
            log.warning("resuming a run planned for %d steps with train.max_steps=%d: the cosine schedule is "
                        "stretched from here on, so the lr jumps", state["max_steps"], tc.max_steps)
        if env.is_main:
            log.info("resuming from %s (step %d)", ckpt, start_step)
    elif resume and env.is_main:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out_dir / "checkpoints")

    def batches(datasets: list, start: SamplerState) -> Generator:
        mixture = Mixture.from_config(replace(run.data, datasets=datasets))
        stream = BatchStream(MixtureSampler(mixture, global_batch, tc.seed), processor, processor.collate,
                             rank=env.rank, world_size=env.world_size, grad_accum=tc.grad_accum,
                             length_grouped=tc.length_grouped, start=start,
                             group_batches=max(1, GROUP_SAMPLES // (tc.batch_size * tc.grad_accum)))
        return micro_batches(stream, run.data.num_workers, tc.seed)

    # the warm-up / first-stage mixture takes the first text_warmup_steps steps, then the main mixture from its start
    # still drawing from the warm-up stream (a checkpoint from its last step is; the loop below then switches)
    warming = start_step < tc.text_warmup_steps or (ckpt is not None and state.get("warming", False))
    if tc.text_warmup_steps and not run.data.warmup_datasets:
        raise ValueError("train.text_warmup_steps > 0 needs data.warmup_datasets (e.g. shapes_echo)")
    metrics = MetricsLog(out_dir, start_step if ckpt is not None else None, tc.tensorboard) if env.is_main else None
    amp_dtype = autocast_dtype(tc.precision, env.device)
    autocast = torch.autocast(env.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)

    def trainer_state() -> dict[str, Any]:
        return {"epoch": sampler_state.epoch, "epoch_step": sampler_state.step, "global_batch": global_batch,
                "seed": tc.seed, "max_steps": tc.max_steps, "warming": warming}

    bar = None
    if env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_steps, initial=start_step, desc="train", dynamic_ncols=True)
    step, last_saved, last_record = start_step, start_step if ckpt is not None else -1, None
    interval, t0, samples_done = LossInterval(), time.perf_counter(), 0
    steps_iter: Generator = batches(run.data.warmup_datasets if warming else run.data.datasets, sampler_state)
    stopped = False
    try:
        with _StopRequest() as stop:
            while step < tc.max_steps:
                if warming and step >= tc.text_warmup_steps:
                    warming, sampler_state = False, SamplerState()
                    steps_iter.close()
                    steps_iter = batches(run.data.datasets, sampler_state)
                sampler_state, mbs = next(steps_iter)
                _forward_backward(wrapped, mbs, env.device, autocast, interval, step + 1)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                interval.steps += 1
                samples_done += global_batch

                if step % tc.log_every == 0 or step == tc.max_steps:
                    last_record = interval.record(env, step=step, lr=lr, grad_norm=grad_norm,
                                                  global_batch=global_batch, epoch=sampler_state.epoch,
                                                  time_s=time.perf_counter() - t0)
                    if metrics is not None:
                        metrics.write(last_record)
                        bar.set_postfix(loss=f"{last_record['loss']:.4f}", lr=f"{lr:.2e}",
                                        sps=f"{last_record['samples_per_s']:.1f}")
                    interval.reset()
                if bar is not None:
                    bar.update(1)
                if stop.agreed(env):
                    stopped = True
                    break
                if tc.save_every > 0 and step % tc.save_every == 0 and step < tc.max_steps:
                    save_checkpoint(out_dir, step, model, wrapped, optimizer, scheduler, trainer_state(), env, sharded,
                                    keep_last)
                    last_saved = step
    finally:
        # shut the data workers down now: they ignore SIGTERM (see mixture.micro_batches), so one still running
        # at interpreter exit would keep the process waiting for it
        steps_iter.close()
        if bar is not None:
            bar.close()
    if step != last_saved:
        save_checkpoint(out_dir, step, model, wrapped, optimizer, scheduler, trainer_state(), env, sharded, keep_last)
    final_ckpt = latest_checkpoint(out_dir)
    if not stopped and step >= tc.max_steps:
        _export_final(out_dir, wrapped, model, env, sharded)
    if metrics is not None:
        metrics.close()
        plot_loss_curves(metrics.path, out_dir / "loss_curves.png")
    wall = time.perf_counter() - t0
    summary = TrainSummary(
        output_dir=str(out_dir), steps=step, final_loss=last_record["loss"] if last_record else None,
        samples_per_s=samples_done / max(wall, 1e-9), peak_rss_mb=peak_rss_mb(),
        peak_gpu_mb=torch.cuda.max_memory_allocated(env.device) / 2**20 if env.device.type == "cuda" else None,
        wall_s=wall, checkpoint=str(final_ckpt) if final_ckpt else None, stopped_early=stopped,
        losses={k: v for k, v in (last_record or {}).items() if k.startswith("loss")})
    env.barrier()
    return summary


def _export_final(out_dir: Path, wrapped: nn.Module, model: nn.Module, env: DistEnv, sharded: bool) -> None:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(wrapped, options=state_dict_options())
    if env.is_main:
        tmp = out_dir / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_dir(model, state, tmp, sharded)
        publish(tmp, out_dir / "model")
    env.barrier()
