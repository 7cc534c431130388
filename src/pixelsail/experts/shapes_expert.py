"""A tiny convolutional segmentation expert for the shapes world: the embedded stand-in for Mask2Former / SAM2.

Architecture (a small FPN, ~0.35M parameters): four stride-2 stages (strides 2, 4, 8, 16) of 3x3 conv + GroupNorm
+ GELU, the last two with an extra dilated conv; the stride-16 output projected to ``image_channels`` is the
``"image"`` feature map; a top-down path adds it to 1x1 lateral projections of the stride-8 and stride-4 stages
and a 3x3 conv smooths the sum into the ``"pixel"`` feature map (stride 4). Both maps are what
:meth:`ShapesExpert.features` returns.

Objective (what makes the dense features meaningful): per-pixel classification of every visible object's colour,
shape and size class (background is class 0 of each), plus instance boundaries (a pixel whose 4-neighbour belongs
to another object or the background) so touching objects of one colour stay apart. The pixel head works on the
stride-4 map (logits upsampled to the image); an auxiliary head makes the stride-16 map predict each cell's
class proportions.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pixelsail.experts import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherError, crop_valid, letterbox_batch

KIND = "pixelsail-shapes-expert"
LABEL_GROUPS = ("color", "shape", "size")


@dataclass
class ShapesExpertConfig:
    """Architecture and label space; saved as ``config.json`` beside the weights."""

    colors: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    widths: tuple[int, int, int, int] = (16, 32, 64, 96)   # stages at strides 2, 4, 8, 16
    pixel_channels: int = 32
    image_channels: int = 64
    image_size: int = 128                                   # long side the expert sees (images are resized to it)
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_shapes_world(cls, **overrides: Any) -> "ShapesExpertConfig":
        from pixelsail.data import shapes

        return cls(colors=list(shapes.COLORS), shapes=list(shapes.SHAPES), sizes=list(shapes.SIZES), **overrides)

    def num_classes(self) -> dict[str, int]:
        """Classes per label group, background (0) included."""
        return {"color": len(self.colors) + 1, "shape": len(self.shapes) + 1, "size": len(self.sizes) + 1}


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    groups = math.gcd(cout, 8)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.GroupNorm(groups, cout), nn.GELU())


class ShapesExpert(nn.Module):
    def __init__(self, config: ShapesExpertConfig):
        super().__init__()
        self.config = config
        w2, w4, w8, w16 = config.widths
        cp, ci = config.pixel_channels, config.image_channels
        self.stem = _block(3, w2, stride=2)
        self.stage4 = nn.Sequential(_block(w2, w4, stride=2), _block(w4, w4))
        # dilated blocks widen the context at strides 8 and 16: telling a star from a circle needs the outline
        self.stage8 = nn.Sequential(_block(w4, w8, stride=2), _block(w8, w8), _block(w8, w8, dilation=2))
        self.stage16 = nn.Sequential(_block(w8, w16, stride=2), _block(w16, w16), _block(w16, w16, dilation=2))
        self.image_proj = nn.Conv2d(w16, ci, 1)
        self.top = nn.Conv2d(ci, cp, 1)
        self.lateral8 = nn.Conv2d(w8, cp, 1)
        self.lateral4 = nn.Conv2d(w4, cp, 1)
        self.smooth = _block(cp, cp)
        n = config.num_classes()
        self.pixel_head = nn.Conv2d(cp, sum(n.values()) + 1, 1)   # + 1: instance boundary logit
        self.image_head = nn.Conv2d(ci, sum(n.values()), 1)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) normalised, H and W multiples of 16 -> {"pixel": (B, Cp, H/4, W/4),
        "image": (B, Ci, H/16, W/16)}."""
        x4 = self.stage4(self.stem(images))
        x8 = self.stage8(x4)
        image = self.image_proj(self.stage16(x8))
        p8 = self.lateral8(x8) + F.interpolate(self.top(image), size=x8.shape[-2:], mode="nearest")
        p4 = self.lateral4(x4) + F.interpolate(p8, size=x4.shape[-2:], mode="nearest")
        return {"pixel": self.smooth(p4), "image": image}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features plus ``pixel_logits`` (B, K+1, H/4, W/4) and ``image_logits`` (B, K, H/16, W/16), where K is
        the number of classes of all label groups, concatenated in :data:`LABEL_GROUPS` order."""
        feats = self.features(images)
        return {**feats, "pixel_logits": self.pixel_head(feats["pixel"]),
                "image_logits": self.image_head(feats["image"])}

    # -------------------------------------------------------------------------------------------- save / load

    def save(self, out_dir: str | Path, extra: dict[str, Any] | None = None, *, fp16: bool = False) -> None:
        """``model.safetensors`` + ``config.json`` (+ ``training.json`` with ``extra`` when given).

        ``fp16`` stores floating-point weights in half precision (half the bytes; :meth:`load` casts back)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float16 if fp16 and v.is_floating_point() else v.dtype).contiguous()
                 for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps({"kind": KIND, **asdict(self.config)}, indent=2) + "\n")
        if extra is not None:
            (out / "training.json").write_text(json.dumps(extra, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "ShapesExpert":
        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        for f in (cfg_file, weights):
            if not f.exists():
                raise TeacherError(f"shapes expert at {path}: missing {f.name}")
        data = json.loads(cfg_file.read_text())
        if data.pop("kind", None) != KIND:
            raise TeacherError(f"{cfg_file}: not a shapes expert (kind != {KIND!r})")
        try:
            config = ShapesExpertConfig(**{k: tuple(v) if k in ("widths", "image_mean", "image_std") else v
                                           for k, v in data.items()})
        except TypeError as e:
            raise TeacherError(f"{cfg_file}: {e}") from None
        model = cls(config)
        try:
            reference = model.state_dict()
            state = {k: v.to(reference[k].dtype) if k in reference else v
                     for k, v in load_file(str(weights), device=device).items()}
            model.load_state_dict(state)
        except RuntimeError as e:
            raise TeacherError(f"{weights} does not match {cfg_file}: {e}") from None
        return model.to(device).eval()


class ShapesExpertTeacher(Teacher):
    """The expert as a distillation teacher: images resized to ``config.image_size`` (long side), square padding."""

    names = ("pixel", "image")

    def __init__(self, model: ShapesExpert, device: str = "cpu", source: str = ""):
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.source = device, source

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "ShapesExpertTeacher":
        return cls(ShapesExpert.load(path, device), device, source=str(Path(path).resolve()))

    def channels(self) -> dict[str, int]:
        return {"pixel": self.model.config.pixel_channels, "image": self.model.config.image_channels}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.source}

    def encode_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        cfg = self.model.config
        pixels, valid = letterbox_batch(images, long_side=cfg.image_size, pad_multiple=16, square=True,
                                        mean=cfg.image_mean, std=cfg.image_std)
        with torch.inference_mode():
            feats = self.model.features(pixels.to(self.device))
        hw = tuple(pixels.shape[-2:])
        per_name = {n: crop_valid(feats[n], valid, hw) for n in self.names}
        return [{n: per_name[n][b] for n in self.names} for b in range(len(images))]


# ------------------------------------------------------------------------------------------------------ labels


def scene_labels(scene: Any, config: ShapesExpertConfig) -> np.ndarray:
    """(4, H, W) int64: colour, shape, size class (0 = background, else 1 + index) and instance boundary (0/1)."""
    h, w = scene.image.shape[:2]
    labels = np.zeros((4, h, w), np.int64)
    instance = np.zeros((h, w), np.int64)
    for obj in scene.objects:
        if not obj.mask.any():
            continue
        labels[0][obj.mask] = config.colors.index(obj.color) + 1
        labels[1][obj.mask] = config.shapes.index(obj.shape) + 1
        labels[2][obj.mask] = config.sizes.index(obj.size) + 1
        instance[obj.mask] = obj.index + 1
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= instance[:, 1:] != instance[:, :-1]
    edge[:, :-1] |= instance[:, 1:] != instance[:, :-1]
    edge[1:, :] |= instance[1:, :] != instance[:-1, :]
    edge[:-1, :] |= instance[1:, :] != instance[:-1, :]
    labels[3] = edge & (instance > 0)
    return labels


def scene_batch(split: str, indices: Sequence[int], config: ShapesExpertConfig, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (B, 3, S, S) normalised and labels (B, 4, S, S) for shapes scenes ``indices`` of ``split``."""
    from pixelsail.data.shapes import generate_scene

    scenes = [generate_scene(split, int(i), seed, config.image_size) for i in indices]
    pixels, _ = letterbox_batch([s.image for s in scenes], long_side=config.image_size, pad_multiple=16,
                                square=True, mean=config.image_mean, std=config.image_std)
    labels = torch.from_numpy(np.stack([scene_labels(s, config) for s in scenes]))
    return pixels, labels


# ------------------------------------------------------------------------------------------------------ training


OBJECT_PIXEL_WEIGHT = 4.0   # objects cover ~20% of a scene; without this the expert first learns "all background"


def expert_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, config: ShapesExpertConfig) -> torch.Tensor:
    """Cross-entropy per label group at full resolution (object pixels weighted up) + boundary BCE + the
    stride-16 proportions loss."""
    size = labels.shape[-2:]
    logits = F.interpolate(out["pixel_logits"], size=size, mode="bilinear", align_corners=False)
    coarse = out["image_logits"]
    weight = 1.0 + (OBJECT_PIXEL_WEIGHT - 1.0) * (labels[:, 0] > 0).float()          # (B, H, W)
    weight = weight / weight.mean()
    loss = logits.new_zeros(())
    start = 0
    for g, (group, n) in enumerate(config.num_classes().items()):
        ce = F.cross_entropy(logits[:, start:start + n], labels[:, g], reduction="none")
        loss = loss + (ce * weight).mean()
        onehot = F.one_hot(labels[:, g], n).permute(0, 3, 1, 2).float()            # (B, n, H, W)
        share = F.adaptive_avg_pool2d(onehot, coarse.shape[-2:])                  # (B, n, H/16, W/16)
        loss = loss + 0.5 * -(share * F.log_softmax(coarse[:, start:start + n], dim=1)).sum(1).mean()
        start += n
    edge = labels[:, 3].float()
    pos_weight = torch.tensor(4.0)
    return loss + F.binary_cross_entropy_with_logits(logits[:, start], edge, pos_weight=pos_weight)


@torch.no_grad()
def evaluate_expert(model: ShapesExpert, *, split: str = "val", n_scenes: int = 64, seed: int = 0,
                    batch_size: int = 32) -> dict[str, float]:
    """Per-pixel accuracy of each label group on ``split`` scenes, over all pixels and over object pixels only,
    beside the trivial baselines (the majority class over all pixels; the most frequent object class)."""
    cfg = model.config
    model.eval()
    correct = {g: 0 for g in LABEL_GROUPS}
    fg_correct = {g: 0 for g in LABEL_GROUPS}
    counts = {g: np.zeros(n, np.int64) for g, n in cfg.num_classes().items()}
    total = 0
    for lo in range(0, n_scenes, batch_size):
        pixels, labels = scene_batch(split, range(lo, min(n_scenes, lo + batch_size)), cfg, seed)
        logits = F.interpolate(model(pixels)["pixel_logits"], size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
        fg = labels[:, 0] > 0
        start = 0
        for g, (group, n) in enumerate(cfg.num_classes().items()):
            pred = logits[:, start:start + n].argmax(1)
            hit = pred == labels[:, g]
            correct[group] += int(hit.sum())
            fg_correct[group] += int((hit & fg).sum())
            counts[group] += np.bincount(labels[:, g].flatten().numpy(), minlength=n)
            start += n
        total += labels[:, 0].numel()
    fg_total = int(total - counts["color"][0])
    report: dict[str, float] = {"pixels": float(total), "object_pixels": float(fg_total)}
    for group in LABEL_GROUPS:
        report[f"{group}_acc"] = correct[group] / total
        report[f"{group}_baseline_acc"] = counts[group].max() / total
        report[f"{group}_object_acc"] = fg_correct[group] / max(1, fg_total)
        report[f"{group}_object_baseline_acc"] = counts[group][1:].max() / max(1, fg_total)
    return report


def train_shapes_expert(*, steps: int = 500, batch_size: int = 16, lr: float = 1e-2, seed: int = 0,
                        config: ShapesExpertConfig | None = None, eval_scenes: int = 128,
                        progress: Callable[[int, float], None] | None = None) -> tuple[ShapesExpert, dict]:
    """Train on fresh ``train``-split scenes (never repeated), AdamW + warm-up + cosine; evaluate on ``val``.

    Returns the model and a summary (steps, seconds, final loss, val metrics)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    config = config or ShapesExpertConfig.for_shapes_world()
    torch.manual_seed(seed)
    model = ShapesExpert(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    start = time.perf_counter()
    loss_value = float("nan")
    model.train()
    for step in range(steps):
        pixels, labels = scene_batch("train", range(step * batch_size, (step + 1) * batch_size), config, seed)
        if step % 2 == 1:    # horizontal flips: the labels are mirror-symmetric, positions are not part of them
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        loss = expert_loss(model(pixels), labels, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.detach().item()
        if progress is not None:
            progress(step, loss_value)
    seconds = time.perf_counter() - start
    metrics = evaluate_expert(model, split="val", n_scenes=eval_scenes, seed=seed)
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "train_seconds": round(seconds, 1),
               "final_loss": loss_value, "parameters": sum(p.numel() for p in model.parameters()),
               "val": metrics}
    return model.eval(), summary
