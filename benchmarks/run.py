"""Pixel-SAIL performance benchmarks: one entry point, one table, one plot.

    python -m benchmarks.run                       # full run (~10 min on a 2-core CPU) -> docs/PERFORMANCE.md
    python -m benchmarks.run --quick               # tiny shapes, < 1 min -> runs/benchmarks-quick/PERFORMANCE.md
    python -m benchmarks.run --device cuda         # MFU against the card's bf16 peak, 0.5B-shaped config
    python -m benchmarks.peers_bench               # Pixel-SAIL 0.5B vs LISA- and Sa2VA-1B-shaped peers, real sizes

Section 2's peer is matched to our size (same LLM, one ViT, SAM-style decoder); the real-size peers are in
benchmarks/peers.py.

Every figure is a min/median/max over repeated runs or a ratio measured inside one repeat: a plain matmul of a
similar shape runs right before and after the measured case, so machine load hits numerator and denominator alike.
"""
from __future__ import annotations

import argparse
import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks import flops
from benchmarks.measure import (Bench, MatmulReference, Stats, interleaved, measure, peak_memory,
                                ratio_stats)
from benchmarks.peer_pipeline import PeerPipeline
from benchmarks.perf_report import kept_findings, plot, render
from pixelsail.config import PixelSailConfig, RunConfig, load_yaml, replace
from pixelsail.data.sample import Sample
from pixelsail.hardware import cpu_name, fast_bf16
from pixelsail.model import PixelSail, build_model
from pixelsail.model.backbone import ATTENTION_IMPLEMENTATIONS, PREFIX_SDPA
from pixelsail.tokens import SEG

QUESTION = "Please segment the small red circle."
FOLLOW_UP = "Please segment the large blue square."
REPO = Path(__file__).resolve().parent.parent

# dense bf16 peak FLOP/s by device-name fragment (for MFU on GPUs)
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


# ------------------------------------------------------------------------------------------------- models and inputs
def model_config(name: str, attn: str = PREFIX_SDPA) -> PixelSailConfig:
    """shapes-tiny (the recipe's model section), 100m (~110M parameters), 0.5b (Qwen2.5-0.5B shape), quick (tiny)."""
    if name == "shapes-tiny":
        cfg = load_yaml(REPO / "configs" / "shapes-tiny.yaml", RunConfig).model
    elif name == "100m":
        cfg = PixelSailConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                              intermediate_size=3072)
    elif name == "0.5b":
        cfg = PixelSailConfig(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                              intermediate_size=4864, vocab_size=151936)
    elif name == "quick":
        cfg = PixelSailConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=256, mask_dim=32, mask_num_points=256, upsample_max_width=64)
    else:
        raise ValueError(f"unknown benchmark config {name!r}; use shapes-tiny, 100m, 0.5b or quick")
    return replace(cfg, attn_implementation=attn)


def make_model(cfg: PixelSailConfig, bench: Bench, seed: int = 0) -> PixelSail:
    torch.manual_seed(seed)
    model = build_model(cfg).to(bench.device)
    model.inference_dtype = bench.autocast_dtype  # prefill/respond autocast themselves (bf16 where it is fast)
    return model


def make_sample(side: int, num_masks: int = 1, seed: int = 0, question: str = QUESTION) -> Sample:
    """A random side x side image with ``num_masks`` box masks and the answer 'Sure, [SEG] ... [SEG].'."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    masks = []
    for _ in range(num_masks):
        y0, x0 = rng.integers(0, side // 2, size=2)
        m = np.zeros((side, side), dtype=bool)
        m[y0:y0 + side // 3, x0:x0 + side // 3] = True
        masks.append(m)
    answer = "Sure, " + " ".join([SEG] * num_masks) + "."
    return Sample(image=image, turns=[(question, answer)], masks=masks, task="res")


def make_batch(model: PixelSail, batch: int, side: int, num_masks: int = 1) -> tuple[dict, flops.BatchShape]:
    feats = [model.processor(make_sample(side, num_masks, seed=i)) for i in range(batch)]
    image = feats[0]["image"]
    labels = feats[0]["labels"]
    shape = flops.BatchShape(batch=batch, grid=image.grid,
                             text_tokens=feats[0]["length"] - (image.grid[0] * image.grid[1] + 2),
                             masks_per_sample=num_masks, supervised_tokens=int((labels[1:] != -100).sum()))
    if any(f["length"] != feats[0]["length"] for f in feats):
        raise RuntimeError("benchmark batches must be uniform (same image size and text length)")
    return model.processor.collate(feats), shape


def train_step_fn(model: PixelSail, batch: dict, bench: Bench) -> Callable[[], None]:
    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        with bench.autocast():
            out = model(**batch)
        out.loss.backward()
    return step


def prefill_fn(model: PixelSail, image: np.ndarray) -> Callable[[], object]:
    return lambda: model.eval().prefill_image(image)


def pixelsail_query(model: PixelSail, image: np.ndarray, question: str = QUESTION, answer: str = f"Sure, {SEG}."):
    """Image in -> mask out: prefill + one cached pass over the question and the forced answer."""
    prefix = model.prefill_image(image)
    return prefix, model.respond(prefix, question, answer_prefix=answer, max_new_tokens=0)


# ------------------------------------------------------------------------------------------------- profiling
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                 "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
                 "aten::_efficient_attention_backward", "aten::_flash_attention_backward")


def profile_breakdown(fn: Callable[[], object], top: int = 6) -> dict:
    """Self time by op: matmul kernels, fused attention, and the largest other ops (what holds utilisation down)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    timer = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    rows = [(e.key, getattr(e, timer), e.count) for e in prof.key_averages()]
    total = sum(t for _, t, _ in rows) or 1.0
    mm = sum(t for k, t, _ in rows if k in MATMUL_OPS)
    attn = sum(t for k, t, _ in rows if k in ATTENTION_OPS)
    others = sorted(((k, t, c) for k, t, c in rows if k not in MATMUL_OPS and k not in ATTENTION_OPS),
                    key=lambda r: -r[1])[:top]
    return {"matmul_share": mm / total, "attention_share": attn / total,
            "other": [(k, t / total, c) for k, t, c in others], "ops": sum(c for _, _, c in rows)}


# ------------------------------------------------------------------------------------------------- the four parts
@dataclass
class Plan:
    limit_configs: list[tuple[str, int, int, int]]    # (config, train batch, train side px, prefill side px)
    peer_configs: list[tuple[str, int]]                # (config, image side px)
    scaling_config: str
    prefill_sides: list[int]
    train_sides: list[int]
    seg_counts: list[int]
    seg_side: int
    seg_batch: int


FULL = Plan(limit_configs=[("shapes-tiny", 16, 128, 256), ("100m", 2, 256, 256)],
            peer_configs=[("shapes-tiny", 256), ("100m", 256)], scaling_config="shapes-tiny",
            prefill_sides=[128, 256, 512, 1024], train_sides=[128, 256, 512], seg_counts=[1, 2, 4, 8, 16],
            seg_side=128, seg_batch=4)
QUICK = Plan(limit_configs=[("quick", 2, 64, 64)], peer_configs=[("quick", 64)], scaling_config="quick",
             prefill_sides=[32, 64], train_sides=[32, 64], seg_counts=[1, 2], seg_side=32, seg_batch=1)
CUDA = Plan(limit_configs=[("100m", 16, 256, 512), ("0.5b", 8, 448, 1024)], peer_configs=[("0.5b", 448)],
            scaling_config="0.5b", prefill_sides=[128, 256, 512, 1024], train_sides=[128, 256, 512],
            seg_counts=[1, 2, 4, 8, 16], seg_side=448, seg_batch=4)


def near_limit(plan: Plan, bench: Bench) -> list[dict]:
    rows = []
    for name, batch, train_side, prefill_side in plan.limit_configs:
        cfg = model_config(name)
        model = make_model(cfg, bench)
        params = flops.parameter_count(model)
        bench.log(f"[limit] {name}: {params / 1e6:.1f}M parameters")
        data, shape = make_batch(model, batch, train_side)
        step = train_step_fn(model, data, bench)
        step_flops = flops.total(flops.train_step(cfg, shape))
        ref = MatmulReference(batch * shape.seq_len, cfg.hidden_size, cfg.intermediate_size, bench)
        train = measure(f"{name} train step", step, bench, flop_count=step_flops, ref=ref)
        train_profile = profile_breakdown(step)
        image = make_sample(prefill_side).image
        pre = prefill_fn(model, image)
        grid = model.processor.image_inputs(image).grid
        pre_flops = flops.total(flops.prefill(cfg, grid))
        pre_ref = MatmulReference(grid[0] * grid[1] + 2, cfg.hidden_size, cfg.intermediate_size, bench)
        with bench.autocast():
            prefill = measure(f"{name} prefill", pre, bench, flop_count=pre_flops, ref=pre_ref)
            prefill_profile = profile_breakdown(pre)
        rows.append({"config": name, "params": params, "train": train, "train_shape": shape,
                     "train_profile": train_profile, "train_ref": ref.shape, "prefill": prefill, "prefill_grid": grid,
                     "prefill_profile": prefill_profile, "prefill_ref": pre_ref.shape})
        del model, data
    return rows


def peer_comparison(plan: Plan, bench: Bench) -> list[dict]:
    rows = []
    for name, side in plan.peer_configs:
        cfg = model_config(name)
        model = make_model(cfg, bench).eval()
        torch.manual_seed(1)
        peer = PeerPipeline(model_config(name), model.processor).to(bench.device).eval()
        image = make_sample(side).image
        answer = f"Sure, {SEG}."
        cached = {}

        def first():
            cached["prefix"], resp = pixelsail_query(model, image)
            if len(resp.masks) != 1:
                raise RuntimeError(f"pixelsail returned {len(resp.masks)} masks for one [SEG]")

        def follow_up():
            model.respond(cached["prefix"], FOLLOW_UP, history=[(QUESTION, answer)], answer_prefix=answer,
                          max_new_tokens=0)

        def peer_query():
            if len(peer.segment(image, QUESTION, answer)) != 1:
                raise RuntimeError("the peer pipeline did not return one mask")

        inputs = model.processor.image_inputs(image)
        patches = inputs.patches.to(bench.device)
        vision_map = torch.randn(1, cfg.hidden_size, *inputs.grid, device=bench.device)
        with torch.no_grad():
            image_embed = peer.neck(peer.vit(patches, inputs.grid))
            prompt = torch.randn(1, image_embed.shape[-1], device=bench.device)
        parts = {"pixelsail_mask_features": lambda: model.mask_features(vision_map),
                 "peer_vit": lambda: peer.vit(patches, inputs.grid),
                 "peer_mask_decoder": lambda: peer.decoder(image_embed, inputs.grid, prompt)}

        bench.log(f"[peer] {name} at {side}px")
        with torch.no_grad(), bench.autocast():
            times = interleaved({"pixelsail": first, "follow_up": follow_up, "peer": peer_query, **parts}, bench)
            memory = {k: peak_memory(fn, bench.device) for k, fn in
                      (("pixelsail", first), ("follow_up", follow_up), ("peer", peer_query))}
        row = {"config": name, "side": side, "times": times, "memory": memory,
               "speedup": ratio_stats(times["peer"], times["pixelsail"]),
               "follow_up_ratio": ratio_stats(times["follow_up"], times["pixelsail"]),
               "params": {"pixelsail": flops.parameter_count(model), **peer.component_parameters()}}
        bench.log(f"  peer / pixelsail {row['speedup'].fmt(digits=2, unit='x')}, "
                  f"follow-up / first {row['follow_up_ratio'].fmt(digits=3)}")
        rows.append(row)
        del model, peer
    return rows


def scaling(plan: Plan, bench: Bench) -> dict:
    cfg = model_config(plan.scaling_config)
    model = make_model(cfg, bench)
    out: dict = {"config": plan.scaling_config, "prefill": [], "train": [], "seg_train": [], "seg_query": []}
    for side in plan.prefill_sides:
        image = make_sample(side).image
        grid = model.processor.image_inputs(image).grid
        fns, mem = {}, {}
        for attn in ATTENTION_IMPLEMENTATIONS:
            fns[attn] = _with_attention(model, attn, prefill_fn(model, image))
        bench.log(f"[scaling] prefill {grid[0] * grid[1]} patches")
        with bench.autocast():
            times = interleaved(fns, bench)
            mem = {attn: peak_memory(fn, bench.device) for attn, fn in fns.items()}
        out["prefill"].append({"patches": grid[0] * grid[1], "times": times, "memory": mem,
                               "flops": flops.total(flops.prefill(cfg, grid))})
        _log_times(bench, times)
    for side in plan.train_sides:
        data, shape = make_batch(model, 1, side)
        fns = {attn: _with_attention(model, attn, train_step_fn(model, data, bench))
               for attn in ATTENTION_IMPLEMENTATIONS}
        bench.log(f"[scaling] train step {shape.patches} patches")
        times = interleaved(fns, bench)
        mem = {attn: peak_memory(fn, bench.device) for attn, fn in fns.items()}
        out["train"].append({"patches": shape.patches, "times": times, "memory": mem,
                             "flops": flops.total(flops.train_step(cfg, shape))})
        _log_times(bench, times)
    model.backbone.set_attention(PREFIX_SDPA)
    seg_train, seg_query = {}, {}
    image = make_sample(plan.seg_side).image
    for k in plan.seg_counts:
        data, shape = make_batch(model, plan.seg_batch, plan.seg_side, num_masks=k)
        seg_train[k] = train_step_fn(model, data, bench)
        seg_query[k] = _seg_query_fn(model, image, k)
    bench.log(f"[scaling] [SEG] count {plan.seg_counts}")
    train_times = interleaved(seg_train, bench)
    with bench.autocast():
        query_times = interleaved(seg_query, bench)
    for k in plan.seg_counts:
        out["seg_train"].append({"masks": k, "seconds": train_times[k],
                                 "memory": peak_memory(seg_train[k], bench.device)})
        with bench.autocast():
            out["seg_query"].append({"masks": k, "seconds": query_times[k],
                                     "memory": peak_memory(seg_query[k], bench.device)})
    return out


def _with_attention(model: PixelSail, attn: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        model.backbone.set_attention(attn)
        return fn()
    return run


def _seg_query_fn(model: PixelSail, image: np.ndarray, k: int) -> Callable[[], object]:
    answer = "Sure, " + " ".join([SEG] * k) + "."

    def run():
        model.eval()
        _, resp = pixelsail_query(model, image, answer=answer)
        if len(resp.masks) != k:
            raise RuntimeError(f"asked for {k} masks, got {len(resp.masks)}")
    return run


def _log_times(bench: Bench, times: dict[str, Stats]) -> None:
    bench.log("  " + ", ".join(f"{k} {v.fmt(1e3, 1, ' ms')}" for k, v in times.items()))


# ------------------------------------------------------------------------------------------------- report
def machine_description(device: torch.device, threads: int, precision: str | None = None) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    # the benchmarks autocast to bf16 exactly where it is fast (AMX / AVX512-BF16), else they stay in fp32
    precision = precision or ("bf16 autocast" if fast_bf16("cpu") else "fp32 (no fast bf16)")
    return f"{cpu_name()}, {os.cpu_count()} cores visible, {threads} torch thread(s), {precision}"


def bf16_peak(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes only (< 1 min)")
    parser.add_argument("--out", type=Path, help="markdown report (default docs/PERFORMANCE.md, "
                                                 "or runs/benchmarks-quick/PERFORMANCE.md with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed, for stable numbers)")
    parser.add_argument("--repeats", type=int, help="timed repeats per case (default 3, quick 2)")
    parser.add_argument("--clock", choices=["cpu", "wall"],
                        help="what a time is: process CPU time (default on CPU: immune to other processes' load) "
                             "or wall-clock time (always on CUDA)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--only", nargs="*", choices=["limit", "peer", "scaling"], help="run only these parts")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else (CUDA if device.type == "cuda" else FULL)
    repeats = args.repeats or (2 if args.quick else 3)
    bench = Bench(device=device, repeats=repeats, ref_seconds=0.02 if args.quick else 0.15,
                  autocast_dtype=torch.bfloat16 if fast_bf16(device) else None,
                  clock="wall" if device.type == "cuda" else (args.clock or "cpu"))
    out = args.out or (REPO / "runs" / "benchmarks-quick" / "PERFORMANCE.md" if args.quick
                       else REPO / "docs" / "PERFORMANCE.md")
    parts = args.only or ["limit", "peer", "scaling"]
    started = time.perf_counter()
    results: dict = {"limit": [], "peer": [], "scaling": None}
    if "limit" in parts:
        results["limit"] = near_limit(plan, bench)
    if "peer" in parts:
        results["peer"] = peer_comparison(plan, bench)
    if "scaling" in parts:
        results["scaling"] = scaling(plan, bench)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + \
        (f" --device {args.device}" if args.device != "cpu" else "") + f" --threads {args.threads}" + \
        (f" --clock {args.clock}" if args.clock else "")
    meta = {"command": command, "machine": machine_description(device, args.threads), "repeats": repeats,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device.type, "peak": bf16_peak(device, args.peak_tflops), "clock": bench.clock,
            "notes": [f"- wall time of the whole benchmark: {time.perf_counter() - started:.0f} s"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    if results["limit"] and results["peer"] and results["scaling"]:
        findings = kept_findings(out)
        out.write_text(render(results, meta) + findings)
        plot(results, out.parent / "performance_scaling.png")
        print(out.read_text())
    return results


if __name__ == "__main__":
    main()
