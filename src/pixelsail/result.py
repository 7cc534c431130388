"""What the Predictor hands back: one answer (:class:`Result`) with its masks, and the notes a person should read
beside it - an empty or missing mask, an image or words unlike the training data, a visual prompt on nothing, and
each way the typed question was rewritten before the model was asked it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelsail.data.export import mask_to_rle
from pixelsail.domain import DomainCheck
from pixelsail.question_form import TrainedForm
from pixelsail.tokens import MCQ_INSTRUCTION, NO_TARGET_ANSWER, vp_token
from pixelsail.viz import contrasting_colors, draw_prompts, overlay_masks

RESTRICTED_NOTE = "answered with one of the question's options (model.option_decoding)"
RECHECKED_NOTE = (f"the model first answered {NO_TARGET_ANSWER!r}; asked again as 'Sure, [SEG]', its masks found "
                  "something (model.no_target_check)")
INSTRUCTED_NOTE = f"asked as the model was trained to read a multiple choice, closed with {MCQ_INSTRUCTION!r}"
CAPITALISED_NOTE = "asked with a capital first letter, as every question the model read in training begins"
ARTICLE_NOTE = "asked with 'the' before the expression, as every expression the model read in training begins"
QUESTION_MARK_NOTE = "asked with a final '?', as every question the model read in training ends"


@dataclass
class Result:
    """One answer. ``masks`` are (H, W) bool at the input image's size, one per ``[SEG]`` in ``text``."""

    text: str
    masks: list[np.ndarray]
    mask_scores: list[float]
    image: np.ndarray
    prompts: dict[int, np.ndarray] = field(default_factory=dict)
    question: str = ""
    seconds: float = 0.0
    prefix_reused: bool = False
    domain: DomainCheck | None = None   # how the image compares with the model's training images (when known)
    restricted: bool = False   # the answer had to be one of the question's "(A) ... (B) ..." options
    rechecked: bool = False    # a first "No target." was overruled by the masks (model.no_target_check)
    instructed: bool = False   # the question's options were closed with MCQ_INSTRUCTION (Predictor.choice_question)
    # how the typed question was rewritten into the form of the model's training questions (question_form)
    capitalised: bool = False     # its first letter was made a capital
    question_mark: bool = False   # a final "?" was added
    article: bool = False         # "the" was put before the expression of a segment question
    unknown_words: list[str] = field(default_factory=list)   # words of the question the model never read in training

    @property
    def background_prompts(self) -> list[int]:
        """k of each <vp_k> that marks no object, only background (shapes models; :attr:`domain`)."""
        return [] if self.domain is None else list(self.domain.background_prompts)

    @property
    def no_target(self) -> bool:
        return not self.masks and self.text.strip().startswith(NO_TARGET_ANSWER)

    @property
    def empty_masks(self) -> list[int]:
        """Indices of the masks that mark no pixel: the model found nothing for that ``[SEG]``."""
        return [i for i, m in enumerate(self.masks) if not m.any()]

    @property
    def empty(self) -> bool:
        """True when the answer has masks and every one of them is empty."""
        return bool(self.masks) and len(self.empty_masks) == len(self.masks)

    @property
    def empty_mask_text(self) -> str:
        """What an empty mask means: nothing matched, or (beside masks that found something) one ``[SEG]`` too many."""
        found = len(self.masks) - len(self.empty_masks)
        if found:
            other = "mask holds" if found == 1 else f"{found} masks hold"
            return f"empty — this [SEG] found nothing more; the answer's other {other} what matched {self.question!r}"
        return f"empty — nothing in the image matched {self.question!r}"

    @property
    def missing_mask_text(self) -> str | None:
        """For a question that asks to segment and got no mask at all, why in words; otherwise None."""
        if self.masks or "segment" not in self.question.lower():
            return None
        if self.no_target:
            return f"no mask — the model answers that nothing in the image matches {self.question!r}"
        return "no mask was produced — the answer has no [SEG], so nothing was segmented"

    @property
    def notes(self) -> list[str]:
        """What a person should know beyond the answer, in words: empty or missing masks, an image or words unlike
        the training data, a question or answer form the model was held to."""
        return [f"mask {i}: {self.empty_mask_text}" for i in self.empty_masks] + self.answer_notes

    @property
    def answer_notes(self) -> list[str]:
        """:attr:`notes` less those about single masks (the CLI prints those on each mask's line)."""
        out = []
        if self.missing_mask_text is not None:
            out.append(self.missing_mask_text)
        if self.domain is not None and not self.domain.in_domain:
            out.append(self.domain.note())
        if self.unknown_words:
            words = ", ".join(repr(w) for w in self.unknown_words)
            out.append(f"the model never read {words} in training, so its answer cannot follow "
                       f"{'that word' if len(self.unknown_words) == 1 else 'those words'}")
        if self.background_prompts:
            tags = ", ".join(vp_token(k) for k in self.background_prompts)
            one = len(self.background_prompts) == 1
            out.append(f"{tags} {'marks' if one else 'mark'} no object, only background: every visual prompt the "
                       f"model saw in training was on an object, so what it says about {'it' if one else 'them'} is "
                       "probably made up")
        if self.capitalised:
            out.append(CAPITALISED_NOTE)
        if self.question_mark:
            out.append(QUESTION_MARK_NOTE)
        if self.article:
            out.append(ARTICLE_NOTE)
        if self.instructed:
            out.append(INSTRUCTED_NOTE)
        if self.restricted:
            out.append(RESTRICTED_NOTE)
        if self.rechecked:
            out.append(RECHECKED_NOTE)
        return out

    @property
    def mask_colors(self) -> list[tuple[int, int, int]]:
        """The overlay colour of each mask (RGB; each contrasts with the pixels its mask covers)."""
        return contrasting_colors(self.image, self.masks)

    def overlay(self, alpha: float = 0.5, show_prompts: bool = True) -> np.ndarray:
        """The image with the answer's masks blended in (and the visual prompts outlined and tagged)."""
        out = overlay_masks(self.image, self.masks, colors=self.mask_colors, alpha=alpha)
        if show_prompts and self.prompts:
            out = draw_prompts(out, self.prompts, alpha=0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: text, timing and each mask as COCO RLE with its area, box (x0, y0, x1, y1), score and overlay
        colour."""
        masks = []
        for m, s, color in zip(self.masks, self.mask_scores, self.mask_colors):
            ys, xs = np.nonzero(m)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if xs.size else None
            masks.append({"rle": mask_to_rle(m), "area": int(m.sum()), "box": box, "score": float(s),
                          "empty": not xs.size, "color": list(color)})
        domain = None if self.domain is None else {"explained": self.domain.explained,
                                                   "in_domain": self.domain.in_domain}
        return {"question": self.question, "text": self.text, "masks": masks, "seconds": round(self.seconds, 4),
                "prefix_reused": self.prefix_reused, "image_size": list(self.image.shape[:2]),
                "empty": self.empty, "notes": self.notes, "domain": domain}


def make_result(resp: Any, image: np.ndarray, question: str, prompts: dict[int, np.ndarray], seconds: float,
                reused: bool, domain: DomainCheck | None = None, instructed: bool = False,
                form: TrainedForm | None = None, unknown_words: list[str] | None = None) -> Result:
    masks = [np.asarray(m, dtype=bool) for m in resp.masks]
    return Result(text=resp.text, masks=masks, mask_scores=[float(s) for s in resp.mask_scores], image=image,
                  prompts=prompts, question=question, seconds=seconds, prefix_reused=reused, domain=domain,
                  restricted=bool(getattr(resp, "restricted", False)),
                  rechecked=bool(getattr(resp, "rechecked", False)), instructed=instructed,
                  capitalised=bool(form and form.capitalised), question_mark=bool(form and form.question_mark),
                  article=bool(form and form.article), unknown_words=unknown_words or [])
