"""The training data stream: a weighted mixture of datasets, a resumable sampler, length grouping and sharding.

How a training step gets its samples:

1. :class:`Mixture` concatenates the datasets of ``DataConfig.datasets``; an epoch takes each dataset ``weight``
   times (the paper's repeat factors: 4 -> four passes, 0.5 -> a random half) and shuffles the lot.
2. :class:`MixtureSampler` cuts the epoch into *global batches* (``batch_size x world_size x grad_accum``
   samples). Its state is two ints (epoch, step); the global batches depend on the seed only, never on how many
   processes share them, so a run can resume on a different world size.
3. Each global batch is split into ``world_size x grad_accum`` micro-batches; rank ``r`` takes its share.
4. :class:`BatchStream` processes a *window* of ``group_batches`` consecutive steps at once (in a DataLoader
   worker, or in the main process when ``num_workers`` is 0). With length grouping, the rank's samples of the
   window are sorted by their processed length and re-cut into micro-batches, so padding stays small; every
   sample is processed exactly once and its features are reused. Grouping only moves samples between the steps
   of one window, so the samples seen over a window are the same for any world size; which step each sample
   lands in does depend on it (a rank sorts only its own share, since knowing the other ranks' lengths would
   mean processing their samples too). With ``length_grouped: false`` every step's global batch is identical
   for any world size.
"""
from __future__ import annotations

import math
import random
import signal
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pixelsail.config import DataConfig
from pixelsail.data.registry import build_dataset


class Mixture:
    """The datasets of a mixture seen as one map-style dataset with global indices, plus their weights."""

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float], names: Sequence[str] | None = None):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        self.names = list(names) if names is not None else [f"dataset{i}" for i in range(len(datasets))]
        for name, ds, w in zip(self.names, datasets, weights):
            if w < 0 or not math.isfinite(w):
                raise ValueError(f"dataset {name!r}: weight must be a finite number >= 0, got {w}")
            if len(ds) == 0:
                raise ValueError(f"dataset {name!r} is empty")
        self.datasets = list(datasets)
        self.weights = [float(w) for w in weights]
        self.offsets = [0]
        for ds in self.datasets:
            self.offsets.append(self.offsets[-1] + len(ds))
        if self.epoch_size() == 0:
            raise ValueError(f"mixture {self.names} with weights {self.weights} yields no samples per epoch")

    @classmethod
    def from_config(cls, data: DataConfig) -> "Mixture":
        datasets = []
        for spec in data.datasets:
            try:
                datasets.append(build_dataset(spec.name, **spec.args))
            except (TypeError, ValueError, KeyError, FileNotFoundError) as e:
                raise ValueError(f"data.datasets entry {spec.name!r} (args {spec.args}): {e}") from e
        return cls(datasets, [s.weight for s in data.datasets], [s.name for s in data.datasets])

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (dataset number, index inside that dataset)."""
        d = bisect_right(self.offsets, index) - 1
        if index < 0 or d >= len(self.datasets):
            raise IndexError(f"mixture index {index} out of range [0, {len(self)})")
        return d, index - self.offsets[d]

    def __getitem__(self, index: int) -> Any:
        d, i = self.locate(index)
        return self.datasets[d][i]

    def _counts(self) -> list[tuple[int, int]]:
        """Per dataset: (whole passes, extra samples drawn without replacement) per epoch."""
        out = []
        for ds, w in zip(self.datasets, self.weights):
            whole = int(math.floor(w))
            out.append((whole, int(round((w - whole) * len(ds)))))
        return out

    def epoch_size(self) -> int:
        return sum(whole * len(ds) + extra for ds, (whole, extra) in zip(self.datasets, self._counts()))

    def epoch_indices(self, seed: int, epoch: int) -> np.ndarray:
        """The shuffled global indices of one epoch; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        parts = []
        for ds, offset, (whole, extra) in zip(self.datasets, self.offsets, self._counts()):
            n = len(ds)
            parts.extend([np.arange(offset, offset + n)] * whole)
            if extra:
                parts.append(offset + rng.choice(n, size=extra, replace=False))
        indices = np.concatenate(parts)
        return indices[rng.permutation(len(indices))]


@dataclass
class SamplerState:
    epoch: int = 0
    step: int = 0          # global steps already taken in this epoch


class MixtureSampler:
    """Deterministic, resumable sequence of global batches (lists of mixture indices).

    Incomplete trailing batches of an epoch are dropped, so every step sees exactly ``global_batch`` samples.
    """

    def __init__(self, mixture: Mixture, global_batch: int, seed: int):
        if global_batch < 1:
            raise ValueError(f"global batch must be >= 1, got {global_batch}")
        self.mixture = mixture
        self.global_batch = global_batch
        self.seed = seed
        self.steps_per_epoch = mixture.epoch_size() // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch has {mixture.epoch_size()} samples, fewer than one global batch "
                             f"of {global_batch}")
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    def epoch_indices(self, epoch: int) -> np.ndarray:
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            self._cached_epoch = (epoch, self.mixture.epoch_indices(self.seed, epoch))
        return self._cached_epoch[1]

    def global_batch_at(self, epoch: int, step: int) -> list[int]:
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside epoch of {self.steps_per_epoch} steps")
        idx = self.epoch_indices(epoch)
        return idx[step * self.global_batch:(step + 1) * self.global_batch].tolist()

    @staticmethod
    def advance(state: SamplerState, steps_per_epoch: int, n: int = 1) -> SamplerState:
        total = state.epoch * steps_per_epoch + state.step + n
        return SamplerState(total // steps_per_epoch, total % steps_per_epoch)


def micro_batch_indices(global_batch: list[int], rank: int, world_size: int, grad_accum: int) -> list[list[int]]:
    """Rank ``rank``'s ``grad_accum`` micro-batches of one global batch: chunk ``a * world_size + rank``."""
    n_chunks = world_size * grad_accum
    if len(global_batch) % n_chunks:
        raise ValueError(f"global batch of {len(global_batch)} does not split into {n_chunks} micro-batches")
    size = len(global_batch) // n_chunks
    return [global_batch[(a * world_size + rank) * size:(a * world_size + rank + 1) * size]
            for a in range(grad_accum)]


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with python/numpy/torch RNGs seeded from ``seed``, then put the caller's RNG states back.

    Processing may draw random numbers (e.g. which ``<vp_k>`` ids a sample gets); seeding per sample makes the
    result independent of worker count, prefetching and resumption, and leaves the training RNG untouched.
    """
    py, np_state, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # the CPU generator only (what get/set_rng_state save): torch.manual_seed also queues a seed for every
    # accelerator backend, capturing a stack trace each time - a fifth of the shapes data time per sample
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(th)


@dataclass
class Window:
    """The processed micro-batches of ``steps`` consecutive steps starting at (epoch, first_step)."""

    epoch: int
    first_step: int
    micro_batches: list[dict[str, Any]]   # steps * grad_accum collated batches, in training order
    indices: list[list[int]]              # the mixture indices in each micro-batch


class BatchStream(IterableDataset):
    """Yields one :class:`Window` per ``group_batches`` steps, from ``start`` on, forever (epochs roll over).

    Workers take whole windows in turn (worker ``w`` handles windows ``w, w + n, ...``) and the DataLoader
    returns them in order, so the stream is the same for any ``num_workers``.
    """

    def __init__(self, sampler: MixtureSampler, process: Callable[[Any], dict], collate: Callable[[list], dict],
                 *, rank: int, world_size: int, grad_accum: int, group_batches: int = 16,
                 length_grouped: bool = True, start: SamplerState | None = None):
        if group_batches < 1:
            raise ValueError(f"group_batches must be >= 1, got {group_batches}")
        self.sampler = sampler
        self.process = process
        self.collate = collate
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.group_batches = group_batches
        self.length_grouped = length_grouped
        self.start = start or SamplerState()
        micro_batch_indices(list(range(sampler.global_batch)), rank, world_size, grad_accum)  # validates split

    def window_bounds(self, window: int) -> tuple[int, int]:
        """[first, end) steps of window ``window`` of an epoch (the last window of an epoch may be short)."""
        first = window * self.group_batches
        return first, min(first + self.group_batches, self.sampler.steps_per_epoch)

    def _windows(self) -> Iterator[tuple[int, int, int, int]]:
        """(epoch, first_step, end_step, skip) of every window from the start state on."""
        epoch, step = self.start.epoch, self.start.step
        while True:
            window = step // self.group_batches
            first, end = self.window_bounds(window)
            yield epoch, first, end, step - first
            step = end
            if step >= self.sampler.steps_per_epoch:
                epoch, step = epoch + 1, 0

    def _process_one(self, epoch: int, index: int) -> dict:
        seed = int(np.random.SeedSequence([self.sampler.seed, epoch, index]).generate_state(1)[0])
        with seeded_rng(seed):
            try:
                return self.process(self.sampler.mixture[index])
            except Exception as e:
                d, i = self.sampler.mixture.locate(index)
                raise RuntimeError(f"dataset {self.sampler.mixture.names[d]!r} sample {i}: loading or processing "
                                   f"failed: {type(e).__name__}: {e}") from e

    def build_window(self, epoch: int, first: int, end: int) -> Window:
        chunks = [mb for step in range(first, end)
                  for mb in micro_batch_indices(self.sampler.global_batch_at(epoch, step), self.rank,
                                                self.world_size, self.grad_accum)]
        size = len(chunks[0])
        flat = [i for c in chunks for i in c]
        feats = [self._process_one(epoch, i) for i in flat]
        order = list(range(len(flat)))
        if self.length_grouped:
            order.sort(key=lambda j: int(feats[j]["length"]))
        groups = [order[k * size:(k + 1) * size] for k in range(len(chunks))]
        if self.length_grouped:
            # the same permutation on every rank: long and short micro-batches interleave over steps
            perm = np.random.default_rng([self.sampler.seed, epoch, first, 1]).permutation(len(groups))
            groups = [groups[p] for p in perm]
        return Window(epoch, first, [self.collate([feats[j] for j in g]) for g in groups],
                      [[flat[j] for j in g] for g in groups])

    def __iter__(self) -> Iterator[tuple[Window, int]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k, (epoch, first, end, skip) in enumerate(self._windows()):
            if k % n_workers == worker:
                yield self.build_window(epoch, first, end), skip


def _keep_as_is(item: Any) -> Any:
    return item


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGINT: ``timeout``, SLURM, Kubernetes and Ctrl-C signal the whole process
    group, and a worker killed by it makes the main process raise instead of saving a checkpoint. The main process
    alone decides to stop; it then shuts the workers down itself (and torch's watchdog ends them if it dies)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def micro_batches(stream: BatchStream, num_workers: int = 0, seed: int = 0
                  ) -> Generator[tuple[SamplerState, list[dict[str, Any]]], None, None]:
    """Iterate steps: (sampler state *after* the step, the rank's ``grad_accum`` micro-batches for the step).

    The DataLoader gets its own generator so creating it never consumes the training RNG (exact resumption).
    """
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_keep_as_is,
                        generator=torch.Generator().manual_seed(seed), worker_init_fn=_ignore_stop_signals,
                        persistent_workers=False, prefetch_factor=2 if num_workers else None)
    a = stream.grad_accum
    spe = stream.sampler.steps_per_epoch
    for window, skip in loader:
        n_steps = len(window.micro_batches) // a
        for s in range(skip, n_steps):
            after = MixtureSampler.advance(SamplerState(window.epoch, window.first_step + s), spe)
            yield after, window.micro_batches[s * a:(s + 1) * a]
