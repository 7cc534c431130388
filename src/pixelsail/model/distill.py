"""Vision-expert distillation: adapters from student features to teacher maps, MSE after resizing the teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SOURCES = ("upsampled", "vision_tokens")


class DistillAdapters(nn.Module):
    """One bias-free 1x1 projection per teacher, from the student feature it is distilled into.

    teachers: {name: {"channels": C_teacher, "source": "upsampled" | "vision_tokens"}}. ``upsampled`` features have
    ``mask_dim`` channels (the paper's Mask2Former target); ``vision_tokens`` have the LLM width (the SAM2 target).
    """

    def __init__(self, *, teachers: dict[str, dict], mask_dim: int, hidden_size: int):
        super().__init__()
        self.sources: dict[str, str] = {}
        layers = {}
        for name, spec in teachers.items():
            source = spec.get("source", "upsampled")
            if source not in SOURCES:
                raise ValueError(f"teacher {name!r}: source {source!r} is not one of {SOURCES}")
            width = mask_dim if source == "upsampled" else hidden_size
            layers[name] = nn.Conv2d(width, int(spec["channels"]), kernel_size=1, bias=False)
            self.sources[name] = source
        self.adapters = nn.ModuleDict(layers)

    def forward(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """student: {source: (G, C, h, w)} for G images; teacher: {name: (G, C_t, h_t, w_t)}. -> {name: mse}."""
        losses = {}
        for name, target in teacher.items():
            if name not in self.adapters:
                raise KeyError(f"teacher features {name!r} given but the model has adapters for {sorted(self.adapters)}")
            pred = self.adapters[name](student[self.sources[name]])  # (G, C_t, h, w)
            target = target.to(pred.device, torch.float32)
            if target.shape[1] != pred.shape[1]:
                raise ValueError(f"teacher {name!r} has {target.shape[1]} channels, the adapter expects {pred.shape[1]}")
            target = F.interpolate(target, size=pred.shape[-2:], mode="bilinear", align_corners=False)
            losses[name] = F.mse_loss(pred.float(), target)
        return losses
