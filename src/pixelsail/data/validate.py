"""Check a pixelsail JSONL file completely and report every problem at once (``pixelsail data validate``)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pixelsail.data.jsonl import Problem, parse_record, read_jsonl
from pixelsail.tokens import DEFAULT_NUM_VP_TOKENS

PROBLEM_KINDS = {
    "json": "the line is not valid JSON",
    "schema": "a field is missing, unknown or of the wrong type",
    "duplicate_id": "two records share an id",
    "image_missing": "the image file does not exist",
    "image_unreadable": "the image file is not a readable image (corrupt, truncated, not an image)",
    "mask_decode": "a mask is neither a valid polygon list nor a decodable COCO RLE",
    "mask_size": "an RLE mask's size differs from the image's",
    "polygon_bounds": "a polygon has vertices outside the image",
    "mask_empty": "a mask covers no pixel",
    "unknown_mask": "a [SEG:name], prompt or expression names a mask not in 'masks'",
    "seg_without_mask": "a bare [SEG] in an answer has no mask (write [SEG:name])",
    "seg_in_question": "a question contains [SEG]",
    "vp_without_prompt": "a <vp_k> in the text has no entry in 'prompts'",
    "vp_out_of_range": "a <vp_k> with k beyond the model's visual-prompt tokens",
    "bad_prompt": "a prompt is not a mask name, a box inside the image or a point inside the image",
    "empty_text": "a question, answer or expression is empty",
}


@dataclass
class ValidationReport:
    path: Path
    n_records: int = 0
    n_valid: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def summary(self) -> str:
        head = (f"{self.path}: {self.n_records} records, {self.n_valid} valid, "
                f"{self.n_records - self.n_valid} with problems, {len(self.problems)} problem(s)")
        if self.ok:
            return head
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(self.counts().items()))
        return f"{head}: {kinds}"


def validate_jsonl(path: str | Path, *, num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS,
                   progress: bool = False) -> ValidationReport:
    """Every problem of every record (decoding each image and mask); never stops at the first one."""
    path = Path(path)
    report = ValidationReport(path)
    first_line_of: dict[str, int] = {}
    lines = read_jsonl(path)
    for line, obj, error in tqdm(lines, desc=f"validating {path.name}", unit="rec", disable=not progress):
        report.n_records += 1
        if error is not None:
            report.problems.append(Problem(line, "json", error))
            continue
        problems: list[Problem] = []
        rid = obj.get("id") if isinstance(obj, dict) else None
        if rid is not None:
            key = str(rid)
            if key in first_line_of:
                problems.append(Problem(line, "duplicate_id", f"id {key!r} was already used on line "
                                                              f"{first_line_of[key]}", key))
            else:
                first_line_of[key] = line
        _, record_problems = parse_record(obj, line=line, base_dir=path.parent, num_vp_tokens=num_vp_tokens)
        problems.extend(record_problems)
        report.problems.extend(problems)
        report.n_valid += not problems
    return report
