"""An offline cache of teacher features, and the providers that attach teacher features to samples.

Layout of a cache directory::

    index.json                  format, teacher identity, names + channels, dtype, data source, shard list
    shard-00000.safetensors     tensors "{name}/{image_id}" -> (C, h, w); header metadata lists its image ids
    shard-00001.safetensors     ...

Every unique ``image_id`` of the data (first occurrence wins; ids must be unique per image) is stored once.
Shards are written to a temporary file and renamed, and the index is rewritten (also atomically) after each
shard, so an interrupted run leaves only complete shards; running the same command again skips them (it re-reads
the data to find its place, but does not run the teacher on finished shards).

The provider contract: ``provider(sample) -> sample`` returning the sample with
``meta["teacher_features"] = {name: float32 (C, h, w)}``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from pixelsail.data.registry import build_dataset, register_dataset
from pixelsail.data.sample import Sample
from pixelsail.experts import Teacher, TeacherError, load_teacher

FORMAT = "pixelsail-feature-cache"
VERSION = 1
INDEX = "index.json"
DTYPES = {"float32": np.float32, "float16": np.float16}
# the student feature each teacher role is distilled into (pixelsail.model.distill.SOURCES)
DEFAULT_SOURCES = {"pixel": "upsampled", "image": "vision_tokens"}


class CacheError(ValueError):
    """A feature cache is missing, incomplete, or was built with other settings; the message says which."""


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _shard_ids(path: Path) -> list[str]:
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if "image_ids" not in meta:
        raise CacheError(f"{path}: shard has no image_ids metadata (not written by pixelsail distill-cache)")
    return json.loads(meta["image_ids"])


# ---------------------------------------------------------------------------------------------------- writing


def unique_images(datasets: Sequence[Any], *, limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, image) for the first sample of every distinct image id, datasets in order."""
    seen: set[str] = set()
    for d, ds in enumerate(datasets):
        for i in range(len(ds)):
            sample = ds[i]
            if not sample.image_id:
                raise CacheError(f"dataset {d}, sample {i}: empty image_id (a cache is keyed by image_id)")
            if sample.image_id in seen:
                continue
            seen.add(sample.image_id)
            yield sample.image_id, sample.image
            if limit is not None and len(seen) >= limit:
                return


def _check_outputs(outputs: list[dict[str, np.ndarray]], ids: Sequence[str], names: Sequence[str],
                   channels: dict[str, int]) -> None:
    if len(outputs) != len(ids):
        raise TeacherError(f"teacher returned {len(outputs)} results for {len(ids)} images")
    for image_id, out in zip(ids, outputs):
        if set(out) != set(names):
            raise TeacherError(f"image {image_id!r}: teacher returned {sorted(out)}, expected {sorted(names)}")
        for n, arr in out.items():
            if getattr(arr, "ndim", None) != 3:
                raise TeacherError(f"image {image_id!r}: {n!r} has shape {getattr(arr, 'shape', None)}, "
                                   "expected (C, h, w)")
            if channels.setdefault(n, int(arr.shape[0])) != arr.shape[0]:
                raise TeacherError(f"image {image_id!r}: {n!r} has {arr.shape[0]} channels, earlier images "
                                   f"had {channels[n]}")


class _CacheWriter:
    """Owns the index while a cache is being built."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]):
        self.dir = out_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / INDEX
        if self.index_path.exists():
            index = json.loads(self.index_path.read_text())
            if index.get("format") != FORMAT:
                raise CacheError(f"{self.index_path} is not a pixelsail feature cache index")
            different = sorted(k for k in settings if index.get(k) != settings[k])
            if different:
                raise CacheError(f"{self.dir} holds a cache built with other settings ({', '.join(different)} "
                                 "differ); use another --out or delete it")
            self.index = index
        else:
            self.index = {"format": FORMAT, "version": VERSION, **settings, "channels": {}, "shards": [],
                          "complete": False}

    def existing_ids(self, k: int) -> list[str] | None:
        path = self.dir / _shard_name(k)
        return _shard_ids(path) if path.exists() else None

    def record(self, k: int, ids: list[str], channels: dict[str, int]) -> None:
        entry = {"file": _shard_name(k), "image_ids": ids}
        self.index["shards"] = [s for s in self.index["shards"] if s["file"] != entry["file"]] + [entry]
        self.index["shards"].sort(key=lambda s: s["file"])
        self.index["channels"].update(channels)
        self.save()

    def write_shard(self, k: int, ids: list[str], tensors: dict[str, np.ndarray]) -> None:
        path = self.dir / _shard_name(k)
        tmp = self.dir / f".{path.name}.tmp"
        save_file(tensors, str(tmp), metadata={"image_ids": json.dumps(ids)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def save(self) -> None:
        _atomic_write_text(self.index_path, json.dumps(self.index, indent=1) + "\n")


def build_cache(teacher: Teacher, images: Iterable[tuple[str, np.ndarray]], out_dir: str | Path, *,
                dtype: str = "float32", shard_size: int = 64, max_shard_bytes: int = 1 << 30,
                data: Any = None, total: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``teacher`` over ``images`` ((image_id, uint8 image) pairs) and store the features in ``out_dir``.

    A shard closes after ``shard_size`` images or ``max_shard_bytes`` of features. ``data`` describes where the
    images came from; with the teacher's identity and ``dtype`` it must match on resume. Returns a summary with
    ``computed`` / ``skipped`` image counts.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    names = list(teacher.names)
    settings = {"teacher": teacher.describe() if hasattr(teacher, "describe") else type(teacher).__name__,
                "names": names, "dtype": dtype, "data": data}
    settings = json.loads(json.dumps(settings))   # compared with the stored index, so in its JSON form
    writer = _CacheWriter(Path(out_dir), settings)
    channels: dict[str, int] = dict(writer.index.get("channels", {}))
    batch_size = max(1, int(getattr(teacher, "batch_size", 8)))
    counts = {"computed": 0, "skipped": 0, "shards_written": 0, "shards_skipped": 0}

    k = 0
    done_ids = writer.existing_ids(0)
    ids: list[str] = []
    tensors: dict[str, np.ndarray] = {}
    nbytes = 0
    pending: list[tuple[str, np.ndarray]] = []

    def run_pending() -> None:
        nonlocal nbytes
        if not pending:
            return
        outs = teacher.encode_batch([img for _, img in pending])
        _check_outputs(outs, [i for i, _ in pending], names, channels)
        for (image_id, _), out in zip(pending, outs):
            for n in names:
                arr = np.ascontiguousarray(np.asarray(out[n], dtype=np.float32).astype(DTYPES[dtype]))
                tensors[f"{n}/{image_id}"] = arr
                nbytes += arr.nbytes
        counts["computed"] += len(pending)
        pending.clear()

    def close_shard() -> None:
        nonlocal k, done_ids, ids, tensors, nbytes
        if done_ids is None:
            run_pending()
            writer.write_shard(k, ids, tensors)
            counts["shards_written"] += 1
        else:
            counts["shards_skipped"] += 1
        writer.record(k, ids, channels)
        k += 1
        done_ids, ids, tensors, nbytes = writer.existing_ids(k), [], {}, 0

    from tqdm import tqdm

    bar = tqdm(total=total, desc="distill-cache", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for image_id, image in images:
            ids.append(image_id)
            if done_ids is not None:
                if len(ids) > len(done_ids) or done_ids[len(ids) - 1] != image_id:
                    raise CacheError(f"{writer.dir / _shard_name(k)} holds other images than the data gives now "
                                     f"(image {len(ids) - 1} of the shard is {image_id!r}); the data changed")
                counts["skipped"] += 1
                full = len(ids) == len(done_ids)
            else:
                pending.append((image_id, image))
                if len(pending) >= batch_size:
                    run_pending()
                full = len(ids) >= shard_size or nbytes >= max_shard_bytes
            bar.update(1)
            bar.set_postfix(shard=k, computed=counts["computed"], skipped=counts["skipped"], refresh=False)
            if full:
                close_shard()
        if ids:
            if done_ids is not None and len(ids) != len(done_ids):
                raise CacheError(f"{writer.dir / _shard_name(k)} holds {len(done_ids)} images but the data ends "
                                 f"after {len(ids)} of them; the data changed")
            close_shard()
    finally:
        bar.close()
    stale = sorted(p.name for p in writer.dir.glob("shard-*.safetensors") if int(p.stem.split("-")[1]) >= k)
    if stale:
        raise CacheError(f"{writer.dir}: shards {stale} lie beyond the data's end; the data changed")
    writer.index["complete"] = True
    writer.index["num_images"] = sum(len(s["image_ids"]) for s in writer.index["shards"])
    writer.save()
    return {**counts, "images": writer.index["num_images"], "shards": len(writer.index["shards"]),
            "channels": dict(channels), "out": str(writer.dir)}


# ---------------------------------------------------------------------------------------------------- reading


class FeatureCache:
    """Read-only view of a cache directory: ``cache[image_id] -> {name: (C, h, w) array}`` in the stored dtype."""

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False):
        self.dir = Path(path)
        index_path = self.dir / INDEX
        if not index_path.exists():
            raise CacheError(f"no feature cache at {self.dir} ({INDEX} missing); build it with "
                             "`pixelsail distill-cache`")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != FORMAT:
            raise CacheError(f"{index_path} is not a pixelsail feature cache index")
        if not self.index.get("complete") and not allow_incomplete:
            raise CacheError(f"the cache at {self.dir} is incomplete (an interrupted run); rerun the same "
                             "`pixelsail distill-cache` command to finish it")
        self.names: list[str] = list(self.index["names"])
        self.channels: dict[str, int] = dict(self.index.get("channels", {}))
        self._shard_of = {i: s["file"] for s in self.index["shards"] for i in s["image_ids"]}

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._shard_of

    def image_ids(self) -> list[str]:
        return list(self._shard_of)

    def __getitem__(self, image_id: str) -> dict[str, np.ndarray]:
        shard = self._shard_of.get(image_id)
        if shard is None:
            raise KeyError(f"image {image_id!r} is not in the feature cache at {self.dir}")
        path = self.dir / shard
        if not path.exists():
            raise CacheError(f"{path} is listed in the index but missing")
        with safe_open(str(path), framework="numpy") as f:
            return {n: f.get_tensor(f"{n}/{image_id}") for n in self.names}

    def distill_teachers(self) -> dict[str, dict[str, Any]]:
        """The ``PixelSailConfig.distill.teachers`` entry matching this cache (pixel -> upsampled,
        image -> vision_tokens; other names default to upsampled)."""
        return {n: {"channels": self.channels[n], "source": DEFAULT_SOURCES.get(n, "upsampled")}
                for n in self.names}


class CachedTeacherProvider:
    """Attaches cached features. ``missing="error"`` raises for an uncached image; ``"skip"`` leaves it as is."""

    def __init__(self, cache: FeatureCache | str | Path, *, missing: str = "error"):
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        self.cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        self.missing = missing

    def __call__(self, sample: Sample) -> Sample:
        if sample.image_id not in self.cache:
            if self.missing == "skip":
                return sample
            raise KeyError(f"sample of image {sample.image_id!r} has no features in the cache at {self.cache.dir}")
        feats = {n: a.astype(np.float32) for n, a in self.cache[sample.image_id].items()}
        return dataclasses.replace(sample, meta={**sample.meta, "teacher_features": feats})


class OnlineTeacherProvider:
    """Runs the teacher on each sample's image as it is loaded (no cache; costs a teacher forward per sample)."""

    def __init__(self, teacher: Teacher | str):
        self.teacher = load_teacher(teacher) if isinstance(teacher, str) else teacher

    def __call__(self, sample: Sample) -> Sample:
        feats = {n: np.asarray(a, dtype=np.float32) for n, a in self.teacher.encode_batch([sample.image])[0].items()}
        return dataclasses.replace(sample, meta={**sample.meta, "teacher_features": feats})


class TeacherFeatureDataset:
    """A map-style dataset whose samples pass through a teacher provider."""

    def __init__(self, dataset: Any, provider: Any):
        self.dataset, self.provider = dataset, provider

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        return self.provider(self.dataset[index])

    def __getattr__(self, name: str) -> Any:   # task_of, split, ... of the wrapped dataset
        if name in ("dataset", "provider"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


@register_dataset("distilled")
def build_distilled(dataset: dict[str, Any], cache: str | None = None, teacher: str | None = None,
                    missing: str = "error") -> TeacherFeatureDataset:
    """``{name: distilled, args: {dataset: {name: shapes, args: {...}}, cache: DIR}}`` in a training mixture
    (``teacher: SPEC`` instead of ``cache`` runs the teacher online)."""
    if (cache is None) == (teacher is None):
        raise ValueError("dataset 'distilled' needs exactly one of cache=DIR or teacher=SPEC")
    if not isinstance(dataset, dict) or "name" not in dataset:
        raise ValueError(f"dataset 'distilled': `dataset` must be a mapping with a name, got {dataset!r}")
    inner = build_dataset(dataset["name"], **dataset.get("args", {}))
    provider = (CachedTeacherProvider(cache, missing=missing) if cache is not None
                else OnlineTeacherProvider(teacher))
    return TeacherFeatureDataset(inner, provider)
