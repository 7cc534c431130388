"""Name -> dataset factory, so a YAML mixture can say ``name: refcoco`` and get a dataset of Samples.

A factory takes keyword arguments from :class:`~pixelsail.config.DatasetSpec.args` and returns a map-style
dataset: ``len(ds)`` and ``ds[i] -> Sample`` (deterministic for a given i).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

_FACTORIES: dict[str, Callable[..., Any]] = {}

# modules that register datasets when imported (kept lazy so optional formats cost nothing until used)
DATASET_MODULES: list[str] = [
    "shapes", "shapes_lookup",
    "refer", "perbench", "region_caption",
    "coco_panoptic", "gcg", "region", "llava", "muse", "jsonl",
]


def register_dataset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"dataset name {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory

    return deco


def _load_all() -> None:
    for mod in DATASET_MODULES:
        importlib.import_module(f"pixelsail.data.{mod}")


def available_datasets() -> list[str]:
    _load_all()
    return sorted(_FACTORIES)


def build_dataset(name: str, **args: Any) -> Any:
    _load_all()
    if name not in _FACTORIES:
        raise KeyError(f"unknown dataset {name!r}; available: {sorted(_FACTORIES)}")
    return _FACTORIES[name](**args)
