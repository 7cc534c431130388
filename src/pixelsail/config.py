"""Dataclass configs (model / data / train), YAML in and out, and named presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from pixelsail.tokens import DEFAULT_NUM_VP_TOKENS


@dataclass
class DistillConfig:
    """Vision-expert distillation: teacher feature maps regressed from the student's features."""

    enabled: bool = False
    # teacher name -> (channels, which student feature: "upsampled" | "vision_tokens")
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)
    weight: float = 0.5


@dataclass
class PixelSailConfig:
    """Everything that defines the model's architecture (saved beside its weights as config.json)."""

    # backbone: a Qwen2-family decoder, built from these fields unless loaded with PixelSail.from_llm
    vocab_size: int = 1024
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    attn_implementation: str = "prefix_sdpa"   # fused, no L x L mask; "sdpa" and "eager" take explicit masks
    # in the last N heads of every layer text tokens do not see the image (not in the paper): a decoder trained from
    # scratch spreads each text query over the many image tokens, and text-to-text routes (copying <vp_k>, reading
    # the expression) then learn far slower than without an image (docs/TRAINING.md). 0 = the paper's attention.
    text_only_heads: int = 0
    # vision input
    patch_size: int = 16
    # "linear": the paper's one linear layer per raw patch; "conv": a small stride-2 conv stem to the same grid (not
    # in the paper; see model/patch_embed.py)
    patch_stem: str = "linear"
    # each patch also gets an absolute position embedding (Fourier features of its centre through a zero-initialised
    # projection; not in the paper, whose vision tokens know place only through relative rotary offsets; see
    # model/patch_position.py)
    patch_position: bool = False
    # the vision block's tokens also attend to the first question after them (not in the paper, where the patches
    # come first and never see the text): the patch features, which the masks are read from, can then depend on the
    # expression. Each question then runs its own image prefill (no image cache shared between questions).
    vision_reads_question: bool = False
    max_image_size: int = 1024
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # improvement 1: learnable upsampling (False: the plain baseline's stride-P features)
    upsample: bool = True
    upsample_stride: int = 4
    upsample_max_width: int = 1024
    mask_dim: int = 512
    # every pixel's mask feature also gets a learned function of its place (Gaussian bumps on an 8x8 lattice through
    # a zero-initialised projection; not in the paper, whose mask features carry no place once trained from scratch:
    # see model/mask_position.py)
    mask_position: bool = False
    # every pixel's mask feature also gets a learned vector per visual prompt covering its patch (zero-initialised;
    # not in the paper: lets "the other red object" leave the marked one out; see model/mask_prompts.py)
    mask_prompts: bool = False
    # every mask-feature cell also gets a learned function of the raw pixels it covers (zero-initialised; not in the
    # paper, whose mask features come from the 16 x 16 patch tokens alone: edges of small and touching objects;
    # see model/image_skip.py); off: in the shipped recipe it cost robustness (perturbed referring 70.8 against
    # 76.7) and grounded conversations (63.0 against 78.6), docs/TRAINING.md session 31
    mask_image_skip: bool = False
    # at inference a predicted mask covering less than this share of the image comes back empty (0 = off; not in the
    # paper, a post-processing floor like SAM's minimum region area). A decoder that finds nothing often leaves a few
    # stray pixels, and an answer that keeps them reads as "found it" (the shapes recipe's 25 / 128^2 is the world's
    # smallest visible object; docs/TRAINING.md, session 18). With seg_query_look it also holds for the first mask, the
    # one the look reads: a look grows stray pixels into whatever resembles them (session 35)
    mask_min_area: float = 0.0
    # inference only: an answer of "No target." is asked again begun as "Sure, [SEG]", and if a mask survives the
    # area floor that answer stands (not in the paper). The mask path tells present from absent better than the
    # answer's first words: the shapes model denied 19 of 198 multi-target lists ("all large stars") that the
    # masks then find (docs/TRAINING.md, session 35)
    no_target_check: bool = False
    # with no_target_check: the answer asked again stands only where one of its masks covers at least this share of
    # the image (0: any mask over mask_min_area will do). The re-asked answer finds an absent target's look-alike as
    # a blob smaller than the objects it finds when they are there (the shapes model, validation split: a fiftieth of
    # the image keeps all 31 present targets it was asked again about and 3 of 66 absent ones, against 19 of 66 at
    # the area floor; docs/TRAINING.md, session 36)
    no_target_check_min_area: float = 0.0
    # every token inside a multiple-choice option ("(B) red") also gets a learned vector of its letter (zero-
    # initialised; not in the paper): the answer's letter is then one content match from its word (see
    # model/option_marks.py)
    option_marks: bool = False
    # at inference a question that lists "(A) ... (B) ..." options is answered with one of them, its letter written
    # with it (constrained greedy decoding; not in the paper, whose answers are generated freely; see
    # model/option_choice.py). Inference only, like mask_min_area
    option_decoding: bool = False
    # [SEG] hidden states standardised before the query MLP (False: the paper's plain MLP; see SegQuery)
    seg_query_norm: bool = False
    # the [SEG] query also attends over the question (not in the paper; see model/question_pool.py): over its tokens'
    # final states ("hidden"), their input embeddings ("embedding") or both ("embedding+hidden", two pools); "" = the
    # paper's [SEG]-state-only query
    seg_query_pool: str = ""
    # with seg_query_pool: the pool also reads the answer's own words since the previous [SEG] (grounded conversation:
    # each mask belongs to the phrase before it); False = the user turn only (not in the paper either way)
    seg_query_reads_answer: bool = False
    # the [SEG] query also attends over its image's mask features (not in the paper; see model/image_readout.py):
    # what only the image tells ("left of the blue square": where the square is), which the question's words cannot
    # give and, with seg_query_stop_grad, the [SEG] state is not trained to carry. Measured on the ladder (session 24):
    # relation no better in 19,200 samples, multi-target within the seed spread; off in every recipe
    seg_query_image_read: bool = False
    # the mask loss trains the query layers but not the [SEG] state they read, which only the language-model loss
    # shapes (not in the paper). Why: with seg_query_norm and seg_query_pool the question pool carries the expression,
    # and the mask loss, amplified by the standardisation, squeezed the [SEG] state to one constant vector; the
    # token after [SEG] then never depended on context (docs/TRAINING.md, session 10)
    seg_query_stop_grad: bool = False
    # the [SEG]s of one list ("Sure, [SEG], [SEG] and [SEG]." for "all red objects") are matched to their targets
    # by the cheapest one-to-one assignment instead of taking them in the data's reading order (not in the paper;
    # see model/set_matching.py). Training only: the masks' union, which every evaluation scores, is unchanged.
    # Measured on the ladder (session 25): multi-target +1.1 / +3.4 points at 21,600 samples on two seeds; off
    mask_set_matching: bool = False
    # each [SEG] of a list gets a learned vector for its place in the list (first, second, ...) added to its input
    # embedding, as DETR's object queries each have their own (not in the paper; model/seg_ordinal.py). Zero at the
    # start. Ladder, session 27: multi-target +1.4 / +0.9 at 21,600 samples on two seeds (78.9 / 79.4); off
    seg_list_ordinal: bool = False
    # auxiliary loss: a linear read-out of each [SEG] state predicts its question's words (not in the paper)
    seg_bow_weight: float = 0.0
    # auxiliary loss: a small head reads each [SEG] state and predicts its target's box, L1 + generalised IoU as
    # DETR's (not in the paper; model/seg_box.py): a direct signal of where the target is, for relations, whose
    # [SEG] state must carry the place of "left of the blue square"; training only unless seg_query_look is "box";
    # 0 = off.
    # Ladder, session 30: relation earlier, not higher; multi-target with mask_image_skip 81.4 / 80.6 at 21,600
    # samples on two seeds
    seg_box_weight: float = 0.0
    # the query also gets the mask features averaged where its target is thought to be, what its target looks like
    # (not in the paper; model/target_look.py): "mask" the cells of its own first mask, "core" the same cells weighted
    # by their logits, "box" a window at the box head's box (needs seg_box_weight); "" off. Why: relation masks lose
    # the target's edges where another object touches it although the box head places the target right. Ladder,
    # session 32 (docs/TRAINING.md): "mask" lifts relation to 79.6 / 78.9 at 72,000 samples on two seeds (72.0 /
    # 72.3 without); "box" is too imprecise a window; session 34: "core" ahead of "mask" on two seeds, 81.5 / 80.2
    # at 57,600 samples (the runs stopped there)
    seg_query_look: str = ""
    # with seg_query_look: the first query's own mask (the one the look reads) is also scored, BCE + Dice at this
    # weight (deep supervision, as Mask2Former scores every layer's masks; not in the paper); 0 = off. Ladder,
    # session 33: at weight 1 level with the look alone on two seeds (relation 79.1 / 78.6 at 72,000 samples)
    seg_look_first_weight: float = 0.0
    # with seg_query_look mask / core: the look is taken this many times, each round's window from the mask of the
    # query the round before refined (the same projection; Mask2Former refines its masks layer by layer); 1 = once.
    # Not yet measured on the ladder (session 34)
    seg_look_rounds: int = 1
    # improvement 2: visual-prompt injection (False: the baseline's pooled patch embeddings)
    vp_injection: bool = True
    # with vp_injection, <vp_k> text tokens also get their region's pooled patch embedding (through a zero-initialised
    # projection; not in the paper): "" off, "tags" every tag token, "answer" only the tags the answer writes (the
    # question's tag stays plain, so copying it into the answer stays easy; docs/TRAINING.md)
    vp_text_pool: str = ""
    # each prompt's centre, box size and area (Fourier features through a projection, as SAM's prompt encoder; not in
    # the paper), what "Which is larger" and "left or right" compare: "" off, "tags" added to its <vp_k> text tokens,
    # "patches" to the patches it covers; never longer than what it is added to, and zero at initialisation (a
    # tanh gate; model/prompt_geometry.py; docs/TRAINING.md, sessions 20-21)
    vp_geometry: str = ""
    num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS
    # improvement 3: vision-expert distillation
    distill: DistillConfig = field(default_factory=DistillConfig)
    # losses (PAPER.md)
    mask_bce_weight: float = 2.0
    mask_dice_weight: float = 0.5
    mask_num_points: int = 12544
    mask_oversample_ratio: float = 3.0
    mask_importance_ratio: float = 0.75
    lm_weight_with_masks: float = 0.1
    lm_weight_without_masks: float = 1.0
    # ids of the special tokens, filled in when the tokenizer is attached
    token_ids: dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """One entry of the training mixture."""

    name: str                      # registry name, e.g. "shapes", "refcoco", "grefcoco", "jsonl"
    weight: float = 1.0            # relative sampling weight (the paper's repeat factors)
    args: dict[str, Any] = field(default_factory=dict)


def inner_dataset(spec: dict[str, Any]) -> dict[str, Any]:
    """The dataset a ``distilled`` wrapper holds, for a mixture entry as a plain dict (``run.yaml``); any other entry
    as it is. (A :class:`DatasetSpec`: :func:`pixelsail.ablation.without_teacher`.)"""
    return (spec.get("args") or {}).get("dataset") or {} if spec.get("name") == "distilled" else spec


@dataclass
class DataConfig:
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec("shapes")])
    # the mixture of the first train.text_warmup_steps steps: a text-only language warm-up (e.g. "shapes_echo") or a
    # curriculum's first stage (e.g. shapes with referring segmentation only)
    warmup_datasets: list[DatasetSpec] = field(default_factory=list)
    max_length: int = 8192
    num_workers: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 8               # per process, per micro-step
    grad_accum: int = 1
    lr: float = 4e-5
    # the decoder transformer's own parameters (token embeddings, layers, final norm) at this rate instead of ``lr``
    # (None: one rate for all). Trained from scratch, a decoder learns the multiple choice's letter look-up alone at
    # 5e-4 and not at 2e-3, and the shapes recipe's marked-region answers survive mask_position only at 5e-4 here
    # (docs/TRAINING.md, session 16)
    backbone_lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    precision: str = "auto"           # "auto": bf16 autocast where bf16 is fast (GPU, AVX512-BF16/AMX CPU) | "bf16" | "fp32"
    gradient_checkpointing: bool = False
    parallel: str = "ddp"             # "ddp" | "fsdp" (used when launched with torchrun)
    length_grouped: bool = True
    text_warmup_steps: int = 0        # first steps drawn from data.warmup_datasets (a warm-up / first stage)
    save_every: int = 200
    log_every: int = 10
    tensorboard: bool = False
    # a pixelsail checkpoint dir (its weights, built with the model section's switches; its decoder's shape and
    # tokenizer) or a local HF LLM dir
    init_from: str | None = None
    tokenizer: str | None = None      # local tokenizer dir (default: the LLM's, or the built-in tiny one)


@dataclass
class RunConfig:
    model: PixelSailConfig = field(default_factory=PixelSailConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------------------------
# generic dataclass <-> dict / YAML


def to_dict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a plain dict, recursing into nested dataclasses; unknown keys are an error."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        try:
            kwargs[name] = _coerce(hints[name], value)
        except ValueError as e:
            raise ValueError(f"{cls.__name__}.{name}: {e}") from None
    return cls(**kwargs)


def _coerce(tp: Any, value: Any) -> Any:
    args = get_args(tp)
    if value is not None and type(None) in args and len(args) == 2:   # "float | None": coerce as the float
        tp = next(a for a in args if a is not type(None))
    origin = getattr(tp, "__origin__", None)
    if is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin is list:
        (inner,) = tp.__args__
        return [_coerce(inner, v) for v in value]
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if tp is float and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    return value


def load_yaml(path: str | Path, cls: type = RunConfig) -> Any:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return from_dict(cls, data)


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def apply_overrides(obj: Any, overrides: list[str]) -> Any:
    """Apply ``section.field=value`` overrides (value parsed as YAML), e.g. ``train.lr=1e-4``; a number indexes a
    list (``data.datasets.0.weight=2``), a dataset's ``args`` take new keys (``...args.answer_style=x``), and an
    empty value empties a text setting (``model.vp_geometry=``)."""
    data = to_dict(obj)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        node, parent = data, ""
        parts = key.split(".")
        for depth, p in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ValueError(f"override {item!r}: {parent or 'the list'} has no item {p!r} "
                                     f"(it has {len(node)})")
            elif not isinstance(node, dict) or (p not in node and not (last and parent == "args")):
                raise ValueError(f"override {item!r}: no such {'field' if last else 'section'} {p!r}")
            if last:
                slot = int(p) if isinstance(node, list) else p
                current = node[slot] if isinstance(node, list) else node.get(slot)
                value = yaml.safe_load(raw)
                # "model.vp_geometry=" empties a text setting (YAML reads an empty value as null)
                node[slot] = "" if value is None and isinstance(current, str) else value
            else:
                node, parent = node[int(p) if isinstance(node, list) else p], p
    return from_dict(type(obj), data)


def to_json(obj: Any) -> str:
    return json.dumps(to_dict(obj), indent=2)


def replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)
