"""The one record every dataset yields and every model consumes.

All datasets (the shapes world, REFER/gRefCOCO, PerBench, region captions, VQA, a user's JSONL) produce
:class:`Sample`; the :class:`~pixelsail.processing.Processor` turns it into tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pixelsail.tokens import SEG

TASKS = (
    "res",             # referring segmentation, one target ("the small red circle" -> [SEG])
    "gres",            # generalised RES: multi-target (several [SEG]) or no target ("No target.")
    "vp_qa",           # open question about <vp_k> regions
    "vp_mcq",          # multiple choice about <vp_k> regions
    "region_caption",  # detailed description of <vp_0>
    "vt_res",          # visual-text referring segmentation: question names <vp_k>, answer has [SEG]
    "gcg",             # grounded conversation: <p> phrase </p> [SEG]
    "vqa",             # general question answering (no masks)
)


@dataclass
class Sample:
    """One image and a conversation about it.

    image:    (H, W, 3) uint8 RGB.
    turns:    [(question, answer), ...]; answers may contain ``[SEG]``, either side may contain ``<vp_k>``.
    masks:    (H, W) bool target masks, one per ``[SEG]`` in the answers, in order of appearance.
    prompts:  k -> (H, W) bool region of ``<vp_k>``. A ``<vp_k>`` mentioned in text but absent here is an
              absent prompt (answer "<vp_k> is not in the image.").
    task:     one of :data:`TASKS`.
    image_id: stable id of the image (used by distillation caches and evaluation).
    meta:     free-form extras (split, ref id, choices, correct answer, no-target flag, ...).
              ``meta["text_only"]``: the image is a placeholder, never shown to the model; such a sample has no
              masks or prompts, and a ``[SEG]`` in it is an ordinary token (the language warm-up uses this).
    """

    image: np.ndarray
    turns: list[tuple[str, str]]
    masks: list[np.ndarray] = field(default_factory=list)
    prompts: dict[int, np.ndarray] = field(default_factory=dict)
    task: str = "res"
    image_id: str = ""
    meta: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency."""
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        h, w = self.image.shape[:2]
        n_seg = sum(a.count(SEG) for _, a in self.turns)
        if self.meta.get("text_only"):
            if self.masks or self.prompts:
                raise ValueError("a text-only sample cannot have masks or visual prompts")
        elif n_seg != len(self.masks):
            raise ValueError(f"{n_seg} [SEG] tokens in the answers but {len(self.masks)} masks")
        for i, m in enumerate(self.masks):
            if m.shape != (h, w):
                raise ValueError(f"mask {i} has shape {m.shape}, image is {(h, w)}")
        for k, m in self.prompts.items():
            if m.shape != (h, w):
                raise ValueError(f"prompt <vp_{k}> has shape {m.shape}, image is {(h, w)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
