"""Frozen vision experts ("teachers") whose dense features Pixel-SAIL distills (PAPER.md, improvement 3).

A teacher maps images to named feature maps. Two names matter to the model:

* ``"pixel"`` — dense high-resolution features (the role of Mask2Former's stride-4 pixel-decoder output),
  distilled into the student's upsampled features;
* ``"image"`` — a coarse image embedding (the role of SAM2's stride-16 image embedding), distilled into the
  student's last-layer vision-token states.

Every teacher returns, per image, ``{name: float32 array (C, h, w)}`` covering exactly the image (padding added
for the network is cropped away), so the model can resize it bilinearly to its own grid.

Teachers come from :func:`load_teacher`: ``"shapes"`` (the shipped shapes expert), a directory holding a shapes
expert or a transformers checkpoint (Mask2Former, SAM, SAM2), or ``"module:factory"`` naming user code.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SHIPPED_SHAPES_EXPERT = Path(__file__).resolve().parent.parent / "assets" / "shapes-expert"


class TeacherError(ValueError):
    """A teacher cannot be loaded or returned malformed features; the message names what and where."""


class Teacher(ABC):
    """A frozen feature extractor. Subclasses set :attr:`names` and implement :meth:`encode_batch`."""

    names: tuple[str, ...] = ()
    batch_size: int = 8

    @abstractmethod
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """(H, W, 3) uint8 images -> per image ``{name: float32 (C, h, w)}``."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity, stored in a feature cache so a resumed run can check it uses the same one."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "names": list(self.names)}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return self.encode_batch([image])[0]


class RenamedTeacher(Teacher):
    """Exposes a one-output teacher's map under another name, e.g. a SAM encoder as ``"pixel"``."""

    def __init__(self, inner: Teacher, name: str):
        if len(inner.names) != 1:
            raise TeacherError(f"can only rename a teacher with one output; this one has {list(inner.names)}")
        self.inner, self.names, self.batch_size = inner, (name,), inner.batch_size

    def encode_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        (old,) = self.inner.names
        return [{self.names[0]: out[old]} for out in self.inner.encode_batch(images)]

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "names": list(self.names)}


class CombinedTeacher(Teacher):
    """Several teachers run on the same images, their outputs merged (names must not clash)."""

    def __init__(self, teachers: Sequence[Teacher]):
        seen: dict[str, int] = {}
        for i, t in enumerate(teachers):
            for n in t.names:
                if n in seen:
                    raise TeacherError(f"teachers {seen[n]} and {i} both produce {n!r}; rename one with NAME=SPEC")
                seen[n] = i
        self.teachers = list(teachers)
        self.names = tuple(seen)
        self.batch_size = min(t.batch_size for t in teachers)

    def encode_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        merged: list[dict[str, np.ndarray]] = [{} for _ in images]
        for t in self.teachers:
            for acc, out in zip(merged, t.encode_batch(images)):
                acc.update(out)
        return merged

    def describe(self) -> dict[str, Any]:
        return {"combined": [t.describe() for t in self.teachers], "names": list(self.names)}


# ---------------------------------------------------------------------------------------------------------------
# preprocessing shared by the teachers (numpy/PIL only)


def letterbox_batch(images: Sequence[np.ndarray], *, long_side: int | None, pad_multiple: int,
                    mean: Sequence[float], std: Sequence[float], square: bool = False, stretch: bool = False,
                    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize (optionally), normalise and zero-pad a batch to one size.

    long_side:    resize so the long side equals it (aspect kept); ``None`` keeps the pixels as they are.
    pad_multiple: the padded height/width are multiples of it (the network's total stride).
    square:       pad to ``long_side`` x ``long_side`` (encoders with a fixed input size, e.g. SAM).
    stretch:      resize to ``long_side`` x ``long_side`` without keeping the aspect (SAM2's preprocessing).
    Returns pixel values (B, 3, Hp, Wp) and each image's valid (h, w) inside the padded canvas (top-left).
    """
    if not images:
        raise ValueError("letterbox_batch: empty batch")
    if (square or stretch) and long_side is None:
        raise ValueError("square padding and stretching need long_side")
    resized, valid = [], []
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise TeacherError(f"image {i}: expected an (H, W, 3) uint8 array, got "
                               f"{getattr(img, 'shape', type(img).__name__)} {getattr(img, 'dtype', '')}")
        h, w = img.shape[:2]
        if stretch:
            h = w = long_side
        elif long_side is not None and max(h, w) != long_side:
            scale = long_side / max(h, w)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
        if (h, w) != img.shape[:2]:
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        resized.append(img)
        valid.append((h, w))
    if square:
        hp = wp = math.ceil(long_side / pad_multiple) * pad_multiple
    else:
        hp = math.ceil(max(h for h, _ in valid) / pad_multiple) * pad_multiple
        wp = math.ceil(max(w for _, w in valid) / pad_multiple) * pad_multiple
    batch = np.zeros((len(images), 3, hp, wp), np.float32)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    for b, (img, (h, w)) in enumerate(zip(resized, valid)):
        batch[b, :, :h, :w] = (img.transpose(2, 0, 1).astype(np.float32) / 255.0 - m) / s
    return torch.from_numpy(batch), valid


def crop_valid(features: torch.Tensor, valid: Sequence[tuple[int, int]], padded_hw: tuple[int, int]
               ) -> list[np.ndarray]:
    """(B, C, h, w) maps over padded canvases -> per image the float32 (C, h', w') part that covers the image."""
    fh, fw = features.shape[-2:]
    hp, wp = padded_hw
    out = []
    for b, (h, w) in enumerate(valid):
        ch, cw = max(1, math.ceil(h * fh / hp)), max(1, math.ceil(w * fw / wp))
        out.append(np.ascontiguousarray(features[b, :, :ch, :cw].detach().float().cpu().numpy()))
    return out


# ---------------------------------------------------------------------------------------------------------------
# loading


def load_teacher(spec: str, *, device: str = "cpu", batch_size: int | None = None, **options: Any) -> Teacher:
    """Build a teacher from a command-line style spec.

    ``shapes``                  the shipped shapes expert (``pixel`` + ``image``);
    ``DIR``                     a shapes-expert directory or a transformers checkpoint directory
                                (Mask2Former -> ``pixel``, SAM / SAM2 -> ``image``);
    ``module:factory``          ``factory()`` from an importable module or a ``.py`` file returns a :class:`Teacher`;
    ``NAME=SPEC``               the same, its single output renamed to NAME;
    ``SPEC+SPEC``               several teachers, outputs merged (e.g. ``m2f_dir+sam2_dir``).
    ``options`` go to the transformers loaders (e.g. ``image_size``).
    """
    parts = [p for p in spec.split("+") if p]
    if not parts:
        raise TeacherError(f"empty teacher spec {spec!r}")
    if len(parts) > 1:
        return CombinedTeacher([load_teacher(p, device=device, batch_size=batch_size, **options) for p in parts])
    spec = parts[0]
    rename = None
    if "=" in spec:
        rename, spec = spec.split("=", 1)
    teacher = _load_single(spec, device=device, **options)
    if batch_size is not None:
        teacher.batch_size = batch_size
    return RenamedTeacher(teacher, rename) if rename else teacher


def _load_single(spec: str, *, device: str, **options: Any) -> Teacher:
    if spec == "shapes":
        from pixelsail.experts.shapes_expert import ShapesExpertTeacher

        if not (SHIPPED_SHAPES_EXPERT / "config.json").exists():
            raise TeacherError(f"the shipped shapes expert is missing at {SHIPPED_SHAPES_EXPERT}; "
                               "train one with `pixelsail expert train-shapes --out DIR` and pass DIR")
        return ShapesExpertTeacher.load(SHIPPED_SHAPES_EXPERT, device=device)
    path = Path(spec)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise TeacherError(f"teacher directory {path} has no config.json")
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise TeacherError(f"{cfg_file}: not valid JSON ({e})") from None
        if cfg.get("kind") == "pixelsail-shapes-expert":
            from pixelsail.experts.shapes_expert import ShapesExpertTeacher

            return ShapesExpertTeacher.load(path, device=device)
        from pixelsail.experts.hf import load_hf_teacher

        return load_hf_teacher(path, device=device, **options)
    if ":" in spec:
        return _load_user_teacher(spec)
    raise TeacherError(f"teacher {spec!r} is neither 'shapes', an existing directory, nor 'module:factory'")


def _load_user_teacher(spec: str) -> Teacher:
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        file = Path(module_name)
        if not file.is_file():
            raise TeacherError(f"teacher module file not found: {file}")
        mod_spec = importlib.util.spec_from_file_location(f"pixelsail_user_teacher_{file.stem}", file)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise TeacherError(f"cannot import teacher module {module_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TeacherError(f"{module_name!r} has no callable {attr!r}")
    teacher = factory()
    if not (hasattr(teacher, "encode_batch") and hasattr(teacher, "names")):
        raise TeacherError(f"{spec}: factory returned {type(teacher).__name__}, which lacks `names` and "
                           "`encode_batch(images) -> list[dict[str, array (C, h, w)]]`")
    return teacher


__all__ = ["Teacher", "TeacherError", "RenamedTeacher", "CombinedTeacher", "letterbox_batch", "crop_valid",
           "load_teacher", "IMAGENET_MEAN", "IMAGENET_STD", "SHIPPED_SHAPES_EXPERT"]
