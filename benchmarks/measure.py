"""How the performance benchmarks measure: repeated timings (min / median / max), a plain-matmul reference run
beside each case so machine load hits both sides of a ratio, peak memory of one call, and interleaved cases."""
from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


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
