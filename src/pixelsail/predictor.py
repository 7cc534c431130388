"""The high-level API: load a model once, then segment / ask / describe / chat about many images.

    from pixelsail import Predictor
    p = Predictor()                                   # the shipped shapes model
    r = p.segment("scene.png", "the red circle")      # r.text, r.masks, r.overlay()
    r = p.ask("scene.png", "What colour is <vp_0>?", prompts=[(10, 10, 40, 40)])
    chat = p.chat("scene.png"); chat.send("Please segment the red circle."); chat.send("What colour is <vp_0>?", prompts=[(20, 30)])

Everything a user hands in is validated here (through :func:`pixelsail.imageio.load_image` and
:mod:`pixelsail.prompts`) and every problem becomes an :class:`InputError` with a message a person can act on.
The vision prefix of an (image, prompts) pair is computed once and kept in a small LRU cache, so follow-up
questions about the same image only pay for the text.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pixelsail.domain import check as check_domain, training_domain, unknown_words
from pixelsail.imageio import DEFAULT_MAX_PIXELS, ImageInputError, ImageSource, load_image
from pixelsail.model_check import ModelFileError, ModelFileWarning, check_model_dir
from pixelsail.prompts import as_prompt_mask, box_to_mask, point_to_mask
from pixelsail.question_form import DETERMINERS, TrainedForm, trained_form
from pixelsail.result import Result, make_result
from pixelsail.tokens import MCQ_INSTRUCTION, vp_indices, vp_token

SHIPPED_MODEL = "shapes-tiny"
SEGMENT_TEMPLATE = "Please segment {expression}."
DESCRIBE_QUESTION = "Please describe <vp_0>."
DEFAULT_MAX_QUESTION_TOKENS = 256


class InputError(ValueError):
    """A request the predictor refuses; the message names the problem."""


def shipped_model_dir(name: str = SHIPPED_MODEL) -> Path:
    """Directory of a model shipped inside the package (``pixelsail/assets/<name>``)."""
    return Path(str(importlib.resources.files("pixelsail") / "assets" / name))


def _prompt_mask(prompt: Any, h: int, w: int) -> np.ndarray:
    """Boxes and points as plain float tuples (so error messages show the numbers as typed), masks as arrays."""
    if isinstance(prompt, (list, tuple)) and len(prompt) in (2, 4) and all(np.isscalar(v) for v in prompt):
        try:
            values = tuple(float(v) for v in prompt)
        except (TypeError, ValueError):
            values = None
        if values is not None:
            return box_to_mask(values, h, w) if len(values) == 4 else point_to_mask(values, h, w)
    return as_prompt_mask(prompt, h, w)


def _digest(image: np.ndarray, prompts: Mapping[int, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    for k in sorted(prompts):
        h.update(f"<vp_{k}>".encode())
        h.update(np.packbits(prompts[k]).data)
    return h.hexdigest()


class Predictor:
    """Load a model once, answer many requests. Thread-safe: requests are served one at a time."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", *, model: Any = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_new_tokens: int = 64,
                 max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS, prefix_cache_size: int = 4,
                 domain: str | None = "auto"):
        if domain == "auto":  # what a loaded model was trained on, from its run.yaml ("shapes", or None: no check)
            domain = None if model is not None else training_domain(model_dir or shipped_model_dir())
        if model is None:
            model = self._load(model_dir, device)
        self.domain = domain
        self.model = model
        self.device = device
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.max_question_tokens = max_question_tokens
        self.prefix_cache_size = prefix_cache_size
        self._prefixes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()

    @staticmethod
    def _load(model_dir: str | Path | None, device: str) -> Any:
        path = Path(model_dir) if model_dir is not None else shipped_model_dir()
        if not (path / "config.json").is_file():
            hint = "" if model_dir is not None else " (the shipped model is missing; pass --model DIR / model_dir=)"
            raise InputError(f"no pixelsail model in {path}: config.json not found{hint}")
        try:  # the files' own check first: one clear line instead of a reader's traceback after the model is built
            for message in check_model_dir(path):
                warnings.warn(message, ModelFileWarning, stacklevel=3)
        except ModelFileError as e:
            raise InputError(str(e)) from None
        from safetensors import SafetensorError

        from pixelsail.model import PixelSail

        try:
            return PixelSail.from_pretrained(path, device=device)
        except (FileNotFoundError, ValueError, SafetensorError) as e:
            raise InputError(f"cannot load the model in {path}: {e}") from None

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def num_vp_tokens(self) -> int:
        return int(self.model.config.num_vp_tokens)

    @property
    def vision_prefill_count(self) -> int:
        return int(self.model.vision_prefill_count)

    # ------------------------------------------------------------------------------------------------ validation
    def load_image(self, image: ImageSource) -> np.ndarray:
        try:
            return load_image(image, max_pixels=self.max_pixels)
        except ImageInputError as e:
            raise InputError(str(e)) from None

    def number_prompts(self, image: np.ndarray, question: str,
                       prompts: Sequence[Any] | Mapping[int, Any] | None) -> dict[int, np.ndarray]:
        """Turn user prompts into {k: (H, W) bool mask}.

        A mapping keeps its keys. A list is numbered in order: onto the ``<vp_k>`` the question names (in order of
        first mention), then onto the smallest unused k; with no ``<vp_k>`` in the question, simply 0, 1, 2, ...
        """
        h, w = image.shape[:2]
        named = vp_indices(question)
        n_vp = self.num_vp_tokens
        for k in named:
            if k >= n_vp:
                raise InputError(f"unknown visual prompt <vp_{k}>: this model has <vp_0>..<vp_{n_vp - 1}>")
        if prompts is None:
            prompts = []
        if not isinstance(prompts, Mapping):
            prompts = list(prompts)
        if len(prompts) > n_vp:
            raise InputError(f"too many visual prompts: {len(prompts)} given, this model has {n_vp} "
                             f"(<vp_0>..<vp_{n_vp - 1}>)")
        if isinstance(prompts, Mapping):
            items = [(int(k), p) for k, p in prompts.items()]
            for k, _ in items:
                if not 0 <= k < n_vp:
                    raise InputError(f"unknown visual prompt <vp_{k}>: this model has <vp_0>..<vp_{n_vp - 1}>")
        else:
            free = [k for k in range(n_vp) if k not in named]
            order = (named + free)[: len(prompts)]
            items = list(zip(order, prompts))
        out: dict[int, np.ndarray] = {}
        for k, p in items:
            try:
                out[k] = _prompt_mask(p, h, w)
            except ValueError as e:
                raise InputError(f"visual prompt {vp_token(k)}: {e}") from None
        missing = [k for k in named if k not in out]
        if missing:
            names = ", ".join(vp_token(k) for k in missing)
            raise InputError(f"the question names {names} but no visual prompt was given for it "
                             f"({len(out)} prompt(s) given)")
        return out

    def check_question(self, question: str, image: np.ndarray, history: Sequence[tuple[str, str]] = ()) -> str:
        """The question the model will be asked for the typed ``question`` (its training form, a multiple choice
        closed with its instruction); an :class:`InputError` when it cannot be asked."""
        return self._checked(question, image, history)[0]

    def _checked(self, question: str, image: np.ndarray,
                 history: Sequence[tuple[str, str]] = ()) -> tuple[str, TrainedForm]:
        """:meth:`check_question`, and the training-form rewrites it made (for the answer's notes)."""
        if not isinstance(question, str):
            raise InputError(f"the question must be text, got {type(question).__name__}")
        form = trained_form(self.domain, question.strip())
        question = self.choice_question(form.text)
        if not question:
            raise InputError("the question is empty")
        processor = self.model.processor
        n_q = len(processor.encode(question))
        if n_q > self.max_question_tokens:
            raise InputError(f"the question is too long: {n_q} tokens, the limit is {self.max_question_tokens}")
        cfg = self.model.config
        from pixelsail.processing import target_size

        th, tw = target_size(*image.shape[:2], cfg.patch_size, cfg.max_image_size)
        n_vision = (th // cfg.patch_size) * (tw // cfg.patch_size) + 2
        n_text = len(processor.prompt_ids(question, list(history)))
        total = n_vision + n_text + self.max_new_tokens
        if total > cfg.max_position_embeddings:
            raise InputError(f"the conversation is too long: {n_vision} image + {n_text} text + "
                             f"{self.max_new_tokens} answer tokens = {total}, the model's limit is "
                             f"{cfg.max_position_embeddings} (start a new chat or shorten the question)")
        return question, form

    # ------------------------------------------------------------------------------------------------ core
    def _prefix(self, image: np.ndarray, prompts: dict[int, np.ndarray]) -> tuple[Any, bool]:
        key = _digest(image, prompts)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key], True
        prefix = self.model.prefill_image(image, prompts=prompts or None)
        self._prefixes[key] = prefix
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)
        return prefix, False

    def _answer(self, image: np.ndarray, question: str, prompts: dict[int, np.ndarray],
                history: Sequence[tuple[str, str]] = (), max_new_tokens: int | None = None) -> Result:
        with self._lock:  # the tokenizer and the cached prefixes are not safe to share between threads
            asked, form = self._checked(question, image, history)
            t0 = time.perf_counter()
            prefix, reused = self._prefix(image, prompts)
            resp = self.model.respond(prefix, asked, history=list(history),
                                      max_new_tokens=max_new_tokens or self.max_new_tokens)
            seconds = time.perf_counter() - t0
        return self._result(resp, image, question, asked, form, prompts, seconds, reused)

    def _result(self, resp: Any, image: np.ndarray, typed: str, asked: str, form: TrainedForm,
                prompts: dict[int, np.ndarray], seconds: float, reused: bool) -> Result:
        """The answer to ``asked`` (what :meth:`check_question` made of the ``typed`` question, by the rewrites in
        ``form`` and perhaps a multiple choice's instruction), with what the person should know about the image and
        the question's words."""
        return make_result(resp, image, asked, prompts, seconds, reused, check_domain(self.domain, image, prompts),
                           instructed=MCQ_INSTRUCTION in asked and MCQ_INSTRUCTION not in typed, form=form,
                           unknown_words=unknown_words(self.domain, asked))

    def trained_form(self, question: str) -> str:
        """``question`` in the form the model's training questions take, where its domain has one (shapes: a capital
        first letter, a final "?" on a question, "the" before a segment question's expression); a multiple choice is
        closed separately (:meth:`choice_question`)."""
        return trained_form(self.domain, question).text

    def clear_cache(self) -> None:
        with self._lock:
            self._prefixes.clear()

    # ------------------------------------------------------------------------------------------------ tasks
    @staticmethod
    def segment_question(text: str) -> str:
        """The instruction for a referring expression: "the red circle" (or "The red circle") -> "Please segment the red
        circle."; a full instruction ("Segment ...", "Please ...") as it is."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("the referring expression is empty")
        expression = text.strip()
        if vp_indices(expression):
            raise InputError("segment takes a plain referring expression; ask questions naming <vp_k> instead")
        if expression.lower().startswith(("please", "segment")):
            return expression
        # a determiner typed first ("The red star") is lower-cased as the sentence's middle writes it
        first, _, rest = expression.partition(" ")
        if first.lower() in DETERMINERS:
            expression = f"{first.lower()} {rest}".rstrip()
        return SEGMENT_TEMPLATE.format(expression=expression.rstrip(".?! "))

    @staticmethod
    def choice_question(question: str) -> str:
        """A multiple choice ("Is <vp_0> left or right of <vp_1>? (A) left (B) right") closed with the instruction
        the training questions end with ("... (B) right. Answer with the option's letter."); a question that lists
        no options or already says how to answer, as it is. Why: the shipped model answers a multiple choice right
        0.91 of the time as trained and 0.46 without the closing instruction (docs/TRAINING.md, session 22)."""
        from pixelsail.model.option_choice import parse_options

        if not parse_options(question) or "answer with" in question.lower():
            return question
        return f"{question}{'' if question.endswith(('.', '?', '!')) else '.'} {MCQ_INSTRUCTION}"

    def segment(self, image: ImageSource, text: str) -> Result:
        """Referring segmentation: ``text`` is an expression ("the red circle") or a full instruction."""
        question = self.segment_question(text)
        return self._answer(self.load_image(image), question, {})

    def ask(self, image: ImageSource, question: str, prompts: Sequence[Any] | Mapping[int, Any] | None = None,
            history: Sequence[tuple[str, str]] = ()) -> Result:
        """Any question, optionally about visual prompts (masks, boxes (x0, y0, x1, y1) or points (x, y))."""
        img = self.load_image(image)
        if not isinstance(question, str):
            raise InputError(f"the question must be text, got {type(question).__name__}")
        numbered = self.number_prompts(img, question, prompts)
        return self._answer(img, question, numbered, history)

    def describe(self, image: ImageSource, prompt: Any) -> Result:
        """Detailed description of one region (a mask, a box or a point), asked about as ``<vp_0>``."""
        img = self.load_image(image)
        if prompt is None:
            raise InputError("describe() needs a region: a mask, a box (x0, y0, x1, y1) or a point (x, y)")
        return self._answer(img, DESCRIBE_QUESTION, self.number_prompts(img, DESCRIBE_QUESTION, [prompt]))

    def chat(self, image: ImageSource) -> ChatSession:
        return ChatSession(self, self.load_image(image))

    # ------------------------------------------------------------------------------------------------ batches
    def ask_many(self, image: ImageSource, questions: Sequence[str],
                 prompts: Sequence[Any] | Mapping[int, Any] | None = None, batch_size: int = 16) -> list[Result]:
        """Many questions about one image (and one set of visual prompts): the image is run once and its prefix
        cache is shared, as a batch view, by ``batch_size`` questions at a time. Same answers as ``ask`` each."""
        img = self.load_image(image)
        return self._answer_batch([(img, q, prompts) for q in questions], batch_size)

    def ask_batch(self, images: Sequence[ImageSource], questions: Sequence[str],
                  prompts: Sequence[Sequence[Any] | Mapping[int, Any] | None] | None = None,
                  batch_size: int = 16) -> list[Result]:
        """``questions[i]`` about ``images[i]`` (with ``prompts[i]``), answered ``batch_size`` pairs at a time; the
        same answers as ``ask`` on each pair. Pairs on the same image share its prefix."""
        if len(images) != len(questions) or (prompts is not None and len(prompts) != len(questions)):
            raise InputError(f"ask_batch needs one question per image: {len(images)} images, {len(questions)} "
                             f"questions" + (f", {len(prompts)} prompt sets" if prompts is not None else ""))
        per_pair = prompts if prompts is not None else [None] * len(questions)
        items = [(self.load_image(im), q, p) for im, q, p in zip(images, questions, per_pair)]
        return self._answer_batch(items, batch_size)

    def _answer_batch(self, items: list[tuple[np.ndarray, str, Any]], batch_size: int) -> list[Result]:
        """Validate every (image, question, prompts) first, then answer them in batches (``seconds``: per query)."""
        from pixelsail.model.batched import respond_batch

        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        checked = []
        for img, question, prompts in items:
            if not isinstance(question, str):
                raise InputError(f"the question must be text, got {type(question).__name__}")
            numbered = self.number_prompts(img, question, prompts)
            checked.append((img, question, *self._checked(question, img), numbered))
        results: list[Result] = []
        with self._lock:
            for start in range(0, len(checked), batch_size):
                chunk = checked[start:start + batch_size]
                t0 = time.perf_counter()
                prefixes = [self._prefix(img, numbered) for img, _, _, _, numbered in chunk]
                responses = respond_batch(self.model, [p for p, _ in prefixes], [q for _, _, q, _, _ in chunk],
                                          max_new_tokens=self.max_new_tokens)
                seconds = (time.perf_counter() - t0) / len(chunk)
                results += [self._result(resp, img, typed, q, form, numbered, seconds, reused)
                            for resp, (img, typed, q, form, numbered), (_, reused) in zip(responses, chunk, prefixes)]
        return results


class ChatSession:
    """A conversation about one image: keeps the history and reuses the image's vision prefix every turn."""

    def __init__(self, predictor: Predictor, image: np.ndarray):
        self.predictor = predictor
        self.image = image
        self.history: list[tuple[str, str]] = []
        self.prompts: dict[int, np.ndarray] = {}

    def send(self, text: str, prompts: Sequence[Any] | Mapping[int, Any] | None = None) -> Result:
        """Ask the next question. ``prompts`` (if given) replace the session's visual prompts from now on."""
        if not isinstance(text, str):
            raise InputError(f"the question must be text, got {type(text).__name__}")
        if prompts is not None:
            new_prompts = self.predictor.number_prompts(self.image, text, prompts)
        else:
            named = [k for k in vp_indices(text) if k not in self.prompts]
            new_prompts = self.predictor.number_prompts(self.image, text, self.prompts) if named else self.prompts
        result = self.predictor._answer(self.image, text, new_prompts, self.history)
        self.prompts = new_prompts
        self.history.append((result.question, result.text))
        return result

    def reset(self) -> None:
        self.history.clear()
        self.prompts = {}
