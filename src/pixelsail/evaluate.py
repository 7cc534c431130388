"""Evaluation: run a model over an evaluation set, write predictions, score them as the field does, report.

Pipeline: ``predict`` (model needed) -> predictions JSONL -> ``score_records`` (no model: every record carries its
ground truth as RLE / text) -> results JSON + Markdown + a rich table, and a gallery of best / worst samples.

The image prefix (vision tokens + KV cache) is computed once per image and prompt set and reused for every question
about that image: samples are visited grouped by image.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from pixelsail.data.export import mask_to_rle
from pixelsail.data.sample import Sample
from pixelsail.metrics import RECHECKED_KEY, RESTRICTED_KEY, union_mask
from pixelsail.scoring import (CONVENTIONS, STANDARD, Scores, check_convention, perbench_row,  # noqa: F401
                               record_masks, score_records)
from pixelsail.tokens import SEG

VTRES_RETRY_PREFIX = f"It is {SEG}."
TASK_TITLES = {"res": "Referring segmentation", "gres": "Generalised referring segmentation",
               "vt_res": "Visual-text referring segmentation", "gcg": "Grounded conversation",
               "region_caption": "Region / object description", "vp_mcq": "Visual-prompt multiple choice",
               "vp_qa": "Visual-prompt QA", "vqa": "General QA", "perbench": "PerBench"}


class EvalModel(Protocol):
    def prefill_image(self, image: np.ndarray, prompts: dict[int, np.ndarray] | None = None) -> Any: ...

    def respond(self, prefix: Any, question: str, history: Sequence[tuple[str, str]] = (),
                max_new_tokens: int = 64, answer_prefix: str = "") -> Any: ...


# ---------------------------------------------------------------------------------------------------------------
# prediction


def _json_safe(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, np.generic):
            v = v.item()
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


def _prompt_fingerprint(prompts: dict[int, np.ndarray]) -> str:
    h = hashlib.sha1()
    for k in sorted(prompts):
        m = np.ascontiguousarray(prompts[k].astype(bool))
        h.update(f"{k}:{m.shape}".encode())
        h.update(np.packbits(m).tobytes())
    return h.hexdigest()


def image_key(dataset: Any, i: int) -> str | None:
    """A cheap key of sample ``i``'s image when the dataset offers one (``dataset.image_key(i)``)."""
    fn = getattr(dataset, "image_key", None)
    return None if fn is None else str(fn(i))


def evaluation_order(dataset: Any, indices: Sequence[int]) -> list[int]:
    """``indices`` grouped by image (first appearance order) when the dataset can name images cheaply."""
    keys = [image_key(dataset, i) for i in indices]
    if any(k is None for k in keys):
        return list(indices)
    first: dict[str, int] = {}
    for pos, k in enumerate(keys):
        first.setdefault(k, pos)  # type: ignore[arg-type]
    return [i for _, _, i in sorted((first[k], pos, i) for pos, (k, i) in enumerate(zip(keys, indices)))]


def predict_sample(model: EvalModel, prefix: Any, sample: Sample, index: int, max_new_tokens: int = 64,
                   response: Any = None) -> dict:
    """Ask the sample's last question (earlier turns as ground-truth history); return its prediction record.
    ``response``: the model's answer when already computed (in a batch)."""
    *history, (question, answer) = sample.turns
    resp = response if response is not None else model.respond(prefix, question, history=list(history),
                                                               max_new_tokens=max_new_tokens)
    reasked = False
    if sample.task == "vt_res" and not resp.masks:
        resp = model.respond(prefix, question, history=list(history), max_new_tokens=max_new_tokens,
                             answer_prefix=VTRES_RETRY_PREFIX)
        reasked = True
    h, w = sample.image.shape[:2]
    pred_masks = [np.asarray(m).astype(bool) for m in resp.masks]
    for j, m in enumerate(pred_masks):
        if m.shape != (h, w):
            raise ValueError(f"sample {index}: predicted mask {j} has shape {m.shape}, the image is {(h, w)}")
    record = {
        "index": index, "task": sample.task, "image_id": sample.image_id, "image_hw": [h, w],
        "question": question, "answer": answer, "text": resp.text,
        "pred_masks": [mask_to_rle(m) for m in pred_masks],
        "mask_scores": [float(s) for s in getattr(resp, "mask_scores", [])],
        "gt_masks": [mask_to_rle(m) for m in sample.masks],
        "meta": _json_safe({k: v for k, v in sample.meta.items() if k != "teacher_features"}),
    }
    if reasked:
        record["reasked"] = True
    if getattr(resp, "rechecked", False):
        record["rechecked"] = True       # "No target." overruled by the masks (model.no_target_check)
    if getattr(resp, "restricted", False):
        record["decoding"] = "options"   # the answer was restricted to the question's options (scored as such)
    return record


def predict(model: EvalModel, dataset: Any, *, indices: Sequence[int] | None = None, max_new_tokens: int = 64,
            progress: bool = True, on_record: Callable[[dict], None] | None = None,
            batch_size: int = 16) -> list[dict]:
    """Predictions for ``dataset[i]`` for i in ``indices`` (default: all), one image prefix per image and prompt set.

    A PixelSail answers ``batch_size`` samples per decoding pass (:func:`pixelsail.model.batched.respond_batch`, the
    same tokens as one at a time); other models, or ``batch_size=1``, one sample at a time.
    """
    from tqdm import tqdm

    order = evaluation_order(dataset, list(range(len(dataset))) if indices is None else list(indices))
    records = []
    prefixes: dict[str, Any] = {}
    current_image: str | None = None
    step = batch_size if hasattr(model, "backbone") else 1
    bar = tqdm(total=len(order), desc="evaluating", unit="sample", disable=not progress)
    for start in range(0, len(order), max(1, step)):
        chunk = [(i, dataset[i]) for i in order[start:start + max(1, step)]]
        chunk_prefixes = []
        for _, sample in chunk:
            # the pixels, not image_id, identify the image: ids may be missing or shared by different renderings
            image_hash = hashlib.sha1(np.ascontiguousarray(sample.image).tobytes()).hexdigest()
            if image_hash != current_image:
                prefixes.clear()  # samples are grouped by image: earlier prefixes will not be asked again
                current_image = image_hash
            key = _prompt_fingerprint(sample.prompts)
            if key not in prefixes:
                prefixes[key] = model.prefill_image(sample.image, prompts=sample.prompts or None)
            chunk_prefixes.append(prefixes[key])
        responses: list[Any] = [None] * len(chunk)
        if step > 1:
            from pixelsail.model.batched import respond_batch

            responses = respond_batch(model, chunk_prefixes, [s.turns[-1][0] for _, s in chunk],
                                      [s.turns[:-1] for _, s in chunk], max_new_tokens=max_new_tokens)
        for (i, sample), prefix, resp in zip(chunk, chunk_prefixes, responses):
            record = predict_sample(model, prefix, sample, i, max_new_tokens=max_new_tokens, response=resp)
            records.append(record)
            if on_record is not None:
                on_record(record)
            bar.update(1)
    bar.close()
    return records


def predict_distributed(model: EvalModel, dataset: Any, **kwargs: Any) -> list[dict]:
    """Each rank predicts every world_size-th image (with all its samples); all ranks get all records."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return predict(model, dataset, **kwargs)
    rank, world = dist.get_rank(), dist.get_world_size()
    indices = kwargs.pop("indices", None)
    order = evaluation_order(dataset, list(range(len(dataset))) if indices is None else list(indices))
    groups: list[list[int]] = []     # runs of samples on one image stay on one rank: one prefill per image
    last = object()
    for i in order:
        key = image_key(dataset, i)
        if key is None or key != last:
            groups.append([])
        groups[-1].append(i)
        last = key
    mine = [i for g in groups[rank::world] for i in g]
    records = predict(model, dataset, indices=mine, progress=kwargs.pop("progress", True) and rank == 0, **kwargs)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, records)
    return sorted((r for part in gathered for r in part), key=lambda r: r["index"])


# ---------------------------------------------------------------------------------------------------------------
# JSONL


def write_jsonl(records: Iterable[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            missing = [k for k in ("index", "task", "image_hw", "text", "pred_masks", "gt_masks", "answer")
                       if k not in r]
            if missing:
                raise ValueError(f"{path}:{n}: prediction record lacks {missing}")
            out.append(r)
    return out


# ---------------------------------------------------------------------------------------------------------------
# reporting


COUNT_KEYS = ("samples", "unpredicted", RESTRICTED_KEY, RECHECKED_KEY)


def _fmt(name: str, v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if name in COUNT_KEYS:
        return str(int(v))
    if name == "MCQ acc (PerBench)":
        return f"{v:.3f}"
    return f"{v:.2f}"


def _metric_rows(results: dict[str, dict[str, float]]) -> tuple[list[str], list[list[str]]]:
    """Header (tasks) and rows (one per metric, first-seen order) of the results table; blank where n/a."""
    tasks = list(results)
    names = [n for n in dict.fromkeys(n for row in results.values() for n in row) if n != "samples"] + ["samples"]
    rows = [[n] + [_fmt(n, results[t][n]) if n in results[t] else "" for t in tasks] for n in names]
    return tasks, rows


def convention_line(convention: str) -> str:
    return f"Convention: {check_convention(convention)} ({CONVENTIONS[convention]})."


def results_markdown(results: dict[str, dict[str, float]], title: str = "Evaluation",
                     convention: str = STANDARD) -> str:
    tasks, rows = _metric_rows(results)
    header = [f"{TASK_TITLES.get(t, t)} (`{t}`)" for t in tasks]
    lines = [f"# {title}", "", convention_line(convention), "",
             "IoU-type values and caption scores in %, MCQ accuracy as a fraction (as in the paper); each metric "
             "names its rule: (LISA) = LISA lineage, (ReLA) = gRefCOCO's canonical evaluator, (authors, ...) = the "
             "authors' scripts, METEOR (COCOEvalCap) = Java METEOR 1.5 after PTB tokenisation, (NLTK, swapped) = "
             "NLTK on whitespace tokens with the prediction as the reference. See docs/EVALUATION.md.", "",
             "| metric | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_results(results: dict[str, dict[str, float]], title: str = "Evaluation", convention: str = STANDARD) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = _metric_rows(results)
    table = Table(title=f"{title} — {check_convention(convention)} convention",
                  caption=convention_line(convention) + " " +
                  ", ".join(f"{t}: {TASK_TITLES.get(t, t)}" for t in header))
    table.add_column("metric")
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def results_paths(out_dir: str | Path, convention: str = STANDARD) -> tuple[Path, Path]:
    """``results.json`` / ``results.md`` for the standard convention, ``results.<convention>.*`` for the others."""
    stem = "results" if check_convention(convention) == STANDARD else f"results.{convention}"
    return Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.md"


def save_results(results: dict[str, dict[str, float]], out_dir: str | Path, info: dict | None = None,
                 title: str = "Evaluation", convention: str = STANDARD) -> tuple[Path, Path]:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_paths(out_dir, convention)
    clean = {t: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
             for t, row in results.items()}
    json_path.write_text(json.dumps({**(info or {}), "convention": convention, "results": clean}, indent=2))
    md_path.write_text(results_markdown(results, title, convention))
    return json_path, md_path


def report(scores: Scores, out_dir: str | Path, info: dict | None = None, title: str = "Evaluation",
           show: bool = True) -> tuple[Path, Path]:
    """Print (when ``show``) and save one convention's scores."""
    if show:
        print_results(scores.results, title, scores.convention)
    return save_results(scores.results, out_dir, info, title, scores.convention)


def rank_records(per_record: dict[int, float], k: int) -> tuple[list[int], list[int]]:
    """Indices of the ``k`` best and ``k`` worst records; ties go to the lower index in both lists."""
    ordered = sorted(per_record.items(), key=lambda kv: (-kv[1], kv[0]))
    best = [i for i, _ in ordered[:k]]
    worst = [i for i, _ in sorted(per_record.items(), key=lambda kv: (kv[1], kv[0]))[:k]]
    return best, worst


GT_COLOR = (0, 200, 120)
PRED_COLOR = (255, 56, 56)


def save_gallery(dataset: Any, records: Sequence[dict], per_record: dict[int, float], out_dir: str | Path,
                 k: int = 8) -> list[Path]:
    """``gallery_best.png`` / ``gallery_worst.png``: per sample the ground truth (green) beside the prediction (red)."""
    from pixelsail.viz import draw_prompts, image_grid, overlay_masks

    if not per_record:
        return []
    by_index = {int(r["index"]): r for r in records}
    best, worst = rank_records(per_record, k)
    paths = []
    for name, chosen in (("best", best), ("worst", worst)):
        tiles, captions = [], []
        for i in chosen:
            r = by_index[i]
            sample = dataset[i]
            base = draw_prompts(sample.image, sample.prompts) if sample.prompts else sample.image
            shape = sample.image.shape[:2]
            gt = union_mask(record_masks(r, "gt_masks"), shape)
            pred = union_mask(record_masks(r, "pred_masks"), shape)
            tiles += [overlay_masks(base, [gt], colors=[GT_COLOR]), overlay_masks(base, [pred], colors=[PRED_COLOR])]
            captions += [f"#{i} GT: {r['question']} -> {r['answer']}",
                         f"pred ({per_record[i]:.2f}): {r['text']}"]
        path = Path(out_dir) / f"gallery_{name}.png"
        image_grid(tiles, captions, ncols=4, tile_size=256).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# evaluation sets


def build_eval_dataset(task: str, data: str | None, *, split: str = "val", split_by: str | None = None,
                       image_dir: str | None = None, shapes_size: int = 500, shapes_tasks: list[str] | None = None,
                       shapes_image_size: int = 128) -> Any:
    """The evaluation dataset of ``task`` (res | gres | region-caption | perbench | shapes) from ``data``.

    ``shapes`` needs no data: it generates ``shapes_size`` samples of the shapes world's ``split`` (of
    ``shapes_tasks`` only, when given, at ``shapes_image_size`` pixels).
    """
    if task in ("res", "gres", "region-caption", "perbench") and not data:
        raise ValueError(f"--task {task} needs --data (a local path)")
    if task in ("res", "gres"):
        from pixelsail.data.refer import ReferEvalDataset

        return ReferEvalDataset(data, split=split, split_by=split_by or _guess_split_by(Path(data)),  # type: ignore
                                image_dir=image_dir, generalized=task == "gres")
    if task == "region-caption":
        from pixelsail.data.region_caption import RegionCaptionDataset

        return RegionCaptionDataset(data, image_dir)  # type: ignore[arg-type]
    if task == "perbench":
        from pixelsail.data.perbench import PerBench

        return PerBench(data, image_dir)  # type: ignore[arg-type]
    if task == "shapes":
        from pixelsail.data.shapes import ShapesDataset

        return ShapesDataset(split=split, size=shapes_size, tasks=shapes_tasks or None, image_size=shapes_image_size)
    raise ValueError(f"unknown task {task!r}; expected res, gres, region-caption, perbench or shapes")


def _guess_split_by(root: Path) -> str:
    """The split_by of the only refs file in ``root``; else 'umd' for RefCOCOg and 'unc' otherwise."""
    found = sorted(p.name[p.name.index("(") + 1:p.name.index(")")] for p in root.glob("*refs(*)*")
                   if "(" in p.name and ")" in p.name)
    if len(set(found)) == 1:
        return found[0]
    return "umd" if "refcocog" in root.name.lower() else "unc"


@dataclass
class EvalRun:
    records: list[dict]
    scores: Scores                              # under the first convention asked for
    files: dict[str, Path]
    by_convention: dict[str, Scores] = field(default_factory=dict)


def evaluate(model: EvalModel, dataset: Any, out_dir: str | Path, *, limit: int | None = None,
             max_new_tokens: int = 64, progress: bool = True, gallery: int = 8, captions: bool = True,
             info: dict | None = None, title: str = "Evaluation", show: bool = True,
             conventions: Sequence[str] = (STANDARD,)) -> EvalRun:
    """Predict, write ``predictions.jsonl``, score under each convention, print, save results and the gallery.

    Results files: see :func:`results_paths`; the gallery ranks samples under the first convention.
    """
    if not conventions:
        raise ValueError("at least one scoring convention is needed")
    for c in conventions:
        check_convention(c)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    records = predict_distributed(model, dataset, indices=list(range(n)), max_new_tokens=max_new_tokens,
                                  progress=progress)
    records.sort(key=lambda r: r["index"])
    files = {"predictions": out / "predictions.jsonl"}
    if _is_main_process():  # first, so that a scorer that fails (Java) loses no prediction: `pixelsail score`
        write_jsonl(records, files["predictions"])
    by_convention = {c: score_records(records, captions=captions, convention=c) for c in dict.fromkeys(conventions)}
    scores = by_convention[conventions[0]]
    if not _is_main_process():
        return EvalRun(records, scores, {}, by_convention)
    for c, sc in by_convention.items():
        suffix = "" if c == conventions[0] else f" ({c})"
        files["json" + suffix], files["markdown" + suffix] = report(sc, out, info, title, show)
    if gallery > 0:
        for p in save_gallery(dataset, records, scores.per_record, out, k=gallery):
            files[p.stem] = p
    return EvalRun(records, scores, files, by_convention)


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
