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
import ctypes
import datetime
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks import flops
from benchmarks.peer_pipeline import PeerPipeline
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


# ------------------------------------------------------------------------------------------------- measurement
@dataclass
class Stats:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        lo, med, hi = (scale * v for v in (min(self.values), self.median, max(self.values)))
        return f"{med:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


@dataclass
class Bench:
    """Where and how to measure: device, dtype for autocast, repeats, minimum seconds per matmul reference."""

    device: torch.device
    repeats: int
    ref_seconds: float
    autocast_dtype: torch.dtype | None = None
    clock: str = "wall"            # "cpu": process CPU time, which other processes' load does not inflate
    log: Callable[[str], None] = print
    last_wall: float = 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def seconds(self, fn: Callable[[], object]) -> float:
        """Seconds of one call by the chosen clock; the wall-clock seconds are kept in ``last_wall``."""
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        self.last_wall = time.perf_counter() - wall
        return time.process_time() - cpu if self.clock == "cpu" else self.last_wall

    def autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


class MatmulReference:
    """A plain (m, k) @ (k, n) matmul: the machine's rate for a shape like the model's main GEMMs."""

    def __init__(self, m: int, k: int, n: int, bench: Bench):
        dtype = bench.autocast_dtype or torch.float32
        self.a = torch.randn(m, k, device=bench.device, dtype=dtype)
        self.b = torch.randn(k, n, device=bench.device, dtype=dtype)
        self.flops = 2.0 * m * k * n
        self.bench = bench
        self.shape = (m, k, n)

    def seconds_per_call(self) -> float:
        calls, spent = 0, 0.0
        while spent < self.bench.ref_seconds or calls < 3:
            spent += self.bench.seconds(lambda: torch.mm(self.a, self.b))
            calls += 1
        return spent / calls

    def rate(self) -> float:
        return self.flops / self.seconds_per_call()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak extra memory of one call: CUDA allocator peak, or on CPU the resident-set peak above the start.

    On CPU a thread samples the RSS every millisecond; the heap is trimmed first so freed memory of earlier cases
    does not hide this one's growth.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    _trim_heap()
    start = _rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], _rss_bytes()) - start


@dataclass
class CaseResult:
    """One measured case: seconds per repeat, the model's FLOPs, and per-repeat ratios to the matmul reference."""

    name: str
    seconds: Stats
    flops: float = 0.0
    ref_ratio: Stats | None = None       # achieved FLOP/s / matmul FLOP/s, per repeat
    ref_rate: Stats | None = None        # matmul FLOP/s, per repeat
    peak_bytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> Stats:
        return Stats([self.flops / s for s in self.seconds.values])


def measure(name: str, fn: Callable[[], object], bench: Bench, *, flop_count: float = 0.0,
            ref: MatmulReference | None = None, memory: bool = True) -> CaseResult:
    """Warm up, then ``repeats`` x (matmul reference, the case, matmul reference); then one call for peak memory."""
    fn()
    times, walls, ratios, rates = [], [], [], []
    for _ in range(bench.repeats):
        before = ref.rate() if ref else 0.0
        t = bench.seconds(fn)
        times.append(t)
        walls.append(bench.last_wall)
        if ref:
            ref_rate = (before + ref.rate()) / 2  # the reference on both sides of the case
            rates.append(ref_rate)
            ratios.append(flop_count / t / ref_rate)
    peak = peak_memory(fn, bench.device) if memory else 0
    result = CaseResult(name, Stats(times), flop_count, Stats(ratios) if ref else None,
                        Stats(rates) if ref else None, peak, {"wall": Stats(walls)})
    bench.log(f"  {name}: {result.seconds.fmt(1e3, 1, ' ms')}"
              + (f", {result.ref_ratio.fmt(100, 0, '%')} of matmul" if ref else "")
              + (f", peak +{peak / 2**20:.0f} MiB" if memory else ""))
    return result


def interleaved(cases: dict[str, Callable[[], object]], bench: Bench) -> dict[str, Stats]:
    """Seconds of several callables run back to back in every repeat (so ratios between them share the load)."""
    for fn in cases.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(bench.repeats):
        for name, fn in cases.items():
            out[name].append(bench.seconds(fn))
    return {k: Stats(v) for k, v in out.items()}


def ratio_stats(num: Stats, den: Stats) -> Stats:
    return Stats([a / b for a, b in zip(num.values, den.values)])


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


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def render(results: dict, meta: dict) -> str:
    peak = meta.get("peak")
    lines = [
        "# Pixel-SAIL performance",
        "",
        f"Reproduce: `{meta['command']}`",
        "",
        f"- machine: {meta['machine']}",
        f"- date: {meta['date']}; torch {torch.__version__}; python {platform.python_version()}",
        f"- every time is median (min–max) over {meta['repeats']} repeats after a warm-up; ratios are taken inside "
        "each repeat (the matmul reference runs right before and right after the case), then summarised the same way",
        ("- times are CPU seconds of the benchmark process (`time.process_time`, fixed thread count): time slices "
         "taken by other processes on this shared machine do not count; wall-clock medians are shown in section 1"
         if meta["clock"] == "cpu" else "- times are wall-clock seconds (device synchronised)"),
        "- FLOPs are counted analytically (`benchmarks/flops.py`: decoder matmuls, allowed attention pairs, patch "
        "embedding, upsampler, mask head; backward = 2x forward); memory is the peak extra "
        + ("CUDA allocation" if meta["device"] == "cuda" else "resident set (RSS) of one call, heap trimmed before it"),
        "",
        "## 1. How close to the machine's matmul rate",
        "",
        "| config | params | case | shape | time | wall time | achieved GFLOP/s | matmul reference GFLOP/s "
        "| ratio to matmul |" + (" MFU (bf16 peak) |" if peak else "") + " peak memory MiB |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if peak else "") + "---|",
    ]
    for row in results["limit"]:
        s = row["train_shape"]
        for case, shape, ref_shape in (("train step (fwd+bwd)", f"B={s.batch}, {s.patches} patches + "
                                        f"{s.text_tokens} text, {s.masks_per_sample} mask", row["train_ref"]),
                                       ("prefill", f"{row['prefill_grid'][0] * row['prefill_grid'][1]} patches",
                                        row["prefill_ref"])):
            r = row["train" if case.startswith("train") else "prefill"]
            mfu = f" {Stats([x / peak for x in r.rate.values]).fmt(100, 1, '%')} |" if peak else ""
            lines.append(f"| {row['config']} | {row['params'] / 1e6:.1f}M | {case} | {shape} | "
                         f"{r.seconds.fmt(1e3, 1, ' ms')} | {r.extra['wall'].median * 1e3:.1f} ms | "
                         f"{r.rate.fmt(1e-9, 1)} | "
                         f"{r.ref_rate.fmt(1e-9, 1)} ({'x'.join(map(str, ref_shape))}) | "
                         f"**{r.ref_ratio.fmt(100, 0, '%')}** |{mfu} {mib(r.peak_bytes)} |")
    lines += ["", "Where the time goes (torch.profiler self time, one call):", ""]
    lines += ["| config | case | matmul kernels | fused attention | largest other ops (share of time, calls) |",
              "|---|---|---|---|---|"]
    for row in results["limit"]:
        for case in ("train", "prefill"):
            p = row[f"{case}_profile"]
            other = "; ".join(f"{k} {100 * s:.1f}% ({c})" for k, s, c in p["other"])
            lines.append(f"| {row['config']} | {case} | {100 * p['matmul_share']:.1f}% | "
                         f"{100 * p['attention_share']:.1f}% | {other} |")
    lines += ["", "## 2. Against a matched three-model pipeline (ViT + the same LLM + SAM-style decoder)", "",
              "One referring-segmentation query, image in -> mask out, answer forced to `Sure, [SEG].` in both "
              "(decoding costs the same in both: same LLM, same text). All callables (both pipelines, the "
              "follow-up, the parts) run back to back in every repeat.", "",
              "| config | image | params pixelsail | params peer (ViT / LLM / mask decoder) | pixelsail query | "
              "peer query | **peer / pixelsail** | follow-up (cached prefix) | **follow-up / first** | "
              "peak MiB pixelsail / peer | of which: pixelsail upsampler + mask MLP / peer ViT / peer mask decoder |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["peer"]:
        p, t = row["params"], row["times"]
        peer_total = p["vit"] + p["llm"] + p["mask_decoder"]
        lines.append(f"| {row['config']} | {row['side']}px | {p['pixelsail'] / 1e6:.1f}M | {peer_total / 1e6:.1f}M "
                     f"({p['vit'] / 1e6:.1f} / {p['llm'] / 1e6:.1f} / {p['mask_decoder'] / 1e6:.1f}) | "
                     f"{t['pixelsail'].fmt(1e3, 1, ' ms')} | {t['peer'].fmt(1e3, 1, ' ms')} | "
                     f"**{row['speedup'].fmt(digits=2, unit='x')}** | {t['follow_up'].fmt(1e3, 1, ' ms')} | "
                     f"**{row['follow_up_ratio'].fmt(digits=3)}** | "
                     f"{mib(row['memory']['pixelsail'])} / {mib(row['memory']['peer'])} | "
                     + " / ".join(t[k].fmt(1e3, 1, " ms") for k in ("pixelsail_mask_features", "peer_vit",
                                                                      "peer_mask_decoder")) + " |")
    sc = results["scaling"]
    attns = list(ATTENTION_IMPLEMENTATIONS)
    header = ["| patches | GFLOP | " + " | ".join(f"{a} ms" for a in attns) + " | sdpa / prefix | eager / prefix | "
              + " | ".join(f"{a} MiB" for a in attns) + " |",
              "|---|---|" + "---|" * (2 * len(attns) + 2)]
    lines += ["", f"## 3. Scaling ({sc['config']} config)", "",
              "Image resolution, prefill (`prefill_image`), by attention implementation: `prefix_sdpa` (fused, "
              "no L x L mask), `sdpa` (explicit (B,1,L,L) bool mask), `eager` (additive float mask). "
              "Ratios are to prefix_sdpa in the same repeat.", "",
              *header]
    for key, title in (("prefill", None), ("train", "Image resolution, training step (B=1, fwd+bwd):")):
        if title:
            lines += ["", title, "", *header]
        for r in sc[key]:
            t = r["times"]
            lines.append(f"| {r['patches']} | {r['flops'] / 1e9:.1f} | "
                         + " | ".join(t[a].fmt(1e3, 1) for a in attns)
                         + f" | {ratio_stats(t['sdpa'], t[PREFIX_SDPA]).fmt(digits=2, unit='x')}"
                         + f" | {ratio_stats(t['eager'], t[PREFIX_SDPA]).fmt(digits=2, unit='x')} | "
                         + " | ".join(mib(r["memory"][a]) for a in attns) + " |")
    base_t, base_q = sc["seg_train"][0]["seconds"], sc["seg_query"][0]["seconds"]
    lines += ["", "Number of `[SEG]` masks per answer (prefix_sdpa): training step and one query (prefill + "
              "cached text pass + masks).", "",
              "| masks | train step ms | train / 1 mask | train MiB | query ms | query / 1 mask | query MiB |",
              "|---|---|---|---|---|---|---|"]
    for tr, q in zip(sc["seg_train"], sc["seg_query"]):
        lines.append(f"| {tr['masks']} | {tr['seconds'].fmt(1e3, 1)} | {ratio_stats(tr['seconds'], base_t).fmt()}x | "
                     f"{mib(tr['memory'])} | {q['seconds'].fmt(1e3, 1)} | {ratio_stats(q['seconds'], base_q).fmt()}x | "
                     f"{mib(q['memory'])} |")
    lines += ["", "![scaling](performance_scaling.png)", ""]
    if meta.get("notes"):
        lines += ["## Notes", "", *meta["notes"], ""]
    return "\n".join(lines)


FINDINGS = "## Findings"


def kept_findings(path: Path) -> str:
    """The hand-written findings section (profile analysis, proposed fixes) of an earlier report, kept on rerun."""
    if not path.is_file():
        return ""
    text = path.read_text()
    at = text.find(FINDINGS)
    return "\n" + text[at:] if at >= 0 else ""


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = results["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, title in ((axes[0], "prefill", "prefill vs image patches"),
                           (axes[1], "train", "train step (B=1) vs image patches")):
        x = [r["patches"] for r in sc[key]]
        for attn in ATTENTION_IMPLEMENTATIONS:
            ax.plot(x, [r["times"][attn].median * 1e3 for r in sc[key]], marker="o", label=attn)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image patches")
        ax.set_ylabel("ms (median)")
        ax.set_title(title)
        ax.legend()
    ks = [r["masks"] for r in sc["seg_train"]]
    axes[2].plot(ks, [r["seconds"].median * 1e3 for r in sc["seg_train"]], marker="o", label="train step")
    axes[2].plot(ks, [r["seconds"].median * 1e3 for r in sc["seg_query"]], marker="o", label="query")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("[SEG] masks per answer")
    axes[2].set_ylabel("ms (median)")
    axes[2].set_title("cost vs number of masks")
    axes[2].legend()
    fig.suptitle(f"Pixel-SAIL scaling ({sc['config']} config)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
