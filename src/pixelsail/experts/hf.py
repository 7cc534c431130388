"""Real teachers read from a local transformers checkpoint directory (their own ``save_pretrained`` format).

* Mask2Former (``model_type: mask2former``; saved as ``Mask2FormerForUniversalSegmentation`` or
  ``Mask2FormerModel``) -> ``"pixel"``: the pixel decoder's stride-4 mask features (B, mask_feature_size, H/4, W/4).
* SAM (``model_type: sam``) -> ``"image"``: the image-encoder embedding, stride 16 (B, 256, 64, 64 at 1024 px).
* SAM2 / SAM2.1 (``model_type: sam2``) -> ``"image"``: the stride-16 image embedding (with the no-memory
  embedding added, as SAM2 itself uses it for a single image).

Preprocessing is numpy/PIL (no torchvision): mean/std from the checkpoint's ``preprocessor_config.json`` when it
has them (0-255 values are rescaled), otherwise ImageNet's.

* Mask2Former: long side resized to ``image_size`` (default: the preprocessor's ``size.longest_edge``, else 1024,
  the student's own cap), zero-padded to a square multiple of 32 (the canvas does not depend on the batch, so
  neither do the features).
* SAM: long side resized to the encoder's fixed size and zero-padded bottom-right to a square, as SAM's
  processor does.
* SAM2: resized to the fixed square (aspect not kept), as SAM2's processor does.

Features of the padding are cropped away, so each returned map covers exactly its image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pixelsail.experts import (
    IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherError, crop_valid, letterbox_batch,
)

SUPPORTED_MODEL_TYPES = ("mask2former", "sam", "sam2")


def load_hf_teacher(path: str | Path, *, device: str = "cpu", **options: Any) -> Teacher:
    """Pick the teacher class from ``config.json``'s ``model_type`` and load the checkpoint at ``path``."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise TeacherError(f"{path} has no config.json (not a transformers checkpoint directory)")
    cfg = json.loads(cfg_file.read_text())
    model_type = cfg.get("model_type")
    cls = {"mask2former": Mask2FormerTeacher, "sam": SamTeacher, "sam2": Sam2Teacher}.get(model_type)
    if cls is None:
        raise TeacherError(f"{cfg_file}: model_type {model_type!r} is not a supported teacher "
                           f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}; or write a 'module:factory' teacher)")
    return cls(path, device=device, **options)


def _normalisation(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = path / "preprocessor_config.json"
    if not pre.exists():
        return IMAGENET_MEAN, IMAGENET_STD
    data = json.loads(pre.read_text())
    mean, std = data.get("image_mean", IMAGENET_MEAN), data.get("image_std", IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        raise TeacherError(f"{pre}: image_mean/image_std must have 3 values, got {mean} / {std}")
    scale = 255.0 if max(mean) > 1.0 else 1.0     # some configs give them in 0-255 pixel units
    return tuple(float(v) / scale for v in mean), tuple(float(v) / scale for v in std)


def _longest_edge(path: Path) -> int | None:
    pre = path / "preprocessor_config.json"
    size = json.loads(pre.read_text()).get("size") if pre.exists() else None
    return int(size["longest_edge"]) if isinstance(size, dict) and "longest_edge" in size else None


def _from_pretrained(model_cls: type, path: Path, device: str) -> torch.nn.Module:
    """Load weights, refusing a checkpoint that leaves any of the model's weights uninitialised."""
    try:
        model, info = model_cls.from_pretrained(str(path), output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherError(f"{path}: cannot load it as {model_cls.__name__}: {reason}") from None
    missing = info.get("missing_keys") or []
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise TeacherError(f"{path}: checkpoint lacks {len(missing)} weight(s) of {model_cls.__name__} "
                           f"(e.g. {shown}); refusing to distill from randomly initialised layers")
    return model.to(device).eval().requires_grad_(False)


def _fixed_size(native: int | Sequence[int], requested: int | None, path: Path) -> int:
    """SAM-family encoders have position embeddings for one input size; any other size is an error."""
    size = int(native[0] if isinstance(native, (list, tuple)) else native)
    if requested is not None and int(requested) != size:
        raise TeacherError(f"{path}: this encoder only takes {size}x{size} inputs; image_size={requested} given")
    return size


class _HFTeacher(Teacher):
    name: str = ""

    def __init__(self, path: Path, device: str):
        self.path, self.device = Path(path), device
        self.mean, self.std = _normalisation(self.path)
        self.names = (self.name,)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path.resolve()), "image_size": self.image_size}

    def encode_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        pixels, valid = self._prepare(images)
        with torch.inference_mode():
            feats = self._forward(pixels.to(self.device))
        return [{self.name: f} for f in crop_valid(feats, valid, tuple(pixels.shape[-2:]))]

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        raise NotImplementedError

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Mask2FormerTeacher(_HFTeacher):
    """Mask2Former pixel-decoder stride-4 features as the ``pixel`` teacher."""

    name = "pixel"

    def __init__(self, path: Path, *, device: str = "cpu", image_size: int | None = None):
        super().__init__(path, device)
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerModel

        archs = json.loads((self.path / "config.json").read_text()).get("architectures") or []
        if "Mask2FormerForUniversalSegmentation" in archs:
            self.model = _from_pretrained(Mask2FormerForUniversalSegmentation, self.path, device).model
        else:
            self.model = _from_pretrained(Mask2FormerModel, self.path, device)
        self.image_size = int(image_size or _longest_edge(self.path) or 1024)

    def _prepare(self, images):
        return letterbox_batch(images, long_side=self.image_size, pad_multiple=32, square=True,
                               mean=self.mean, std=self.std)

    def _forward(self, pixels):
        return self.model(pixel_values=pixels).pixel_decoder_last_hidden_state


class SamTeacher(_HFTeacher):
    """SAM's image embedding as the ``image`` teacher."""

    name = "image"

    def __init__(self, path: Path, *, device: str = "cpu", image_size: int | None = None):
        super().__init__(path, device)
        from transformers import SamModel

        self.model = _from_pretrained(SamModel, self.path, device)
        self.image_size = _fixed_size(self.model.config.vision_config.image_size, image_size, self.path)

    def _prepare(self, images):
        return letterbox_batch(images, long_side=self.image_size, pad_multiple=self.image_size, square=True,
                               mean=self.mean, std=self.std)

    def _forward(self, pixels):
        return self.model.get_image_embeddings(pixel_values=pixels)


class Sam2Teacher(_HFTeacher):
    """SAM2's stride-16 image embedding as the ``image`` teacher."""

    name = "image"

    def __init__(self, path: Path, *, device: str = "cpu", image_size: int | None = None):
        super().__init__(path, device)
        from transformers import Sam2Model

        self.model = _from_pretrained(Sam2Model, self.path, device)
        self.image_size = _fixed_size(self.model.config.vision_config.backbone_config.image_size, image_size,
                                      self.path)

    def _prepare(self, images):
        return letterbox_batch(images, long_side=self.image_size, pad_multiple=1, stretch=True,
                               mean=self.mean, std=self.std)

    def _forward(self, pixels):
        return self.model.get_image_embeddings(pixel_values=pixels)[-1]
