"""Do region descriptions name the right object? Size, colour and shape read off shapes-world descriptions.

    python -m benchmarks.region_attributes runs/eval/predictions.jsonl

The shapes world describes a region as "<vp_k>: a large red circle in the top left, ...". METEOR rewards the shared
words of a wrong description ("a ... in the ... left"); this counts how often the first noun phrase names the
target's size, colour and shape (each, and all three together), over the ``region_caption`` records of a
``pixelsail eval --task shapes`` predictions file.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pixelsail.data.shapes import COLOR_NAMES, SHAPES, SIZES

_PHRASE = re.compile(r"\ba (\w+) (\w+) (\w+)")


def first_phrase(text: str) -> tuple[str, str, str] | None:
    """(size, colour, shape) of the first "a <size> <colour> <shape>" in ``text``, or None."""
    m = _PHRASE.search(text)
    if m is None or m.group(1) not in SIZES or m.group(2) not in COLOR_NAMES or m.group(3) not in SHAPES:
        return None
    return m.group(1), m.group(2), m.group(3)


def score(records: list[dict]) -> dict[str, float]:
    """Percent of region_caption records whose prediction names the reference's size / colour / shape / all three."""
    hits = {"size": 0, "colour": 0, "shape": 0, "all three": 0}
    n = 0
    for r in records:
        if r.get("task") != "region_caption":
            continue
        want = first_phrase(r["answer"])
        if want is None:   # an absent-prompt question: nothing to name
            continue
        n += 1
        got = first_phrase(r["text"]) or ("", "", "")
        same = [g == w for g, w in zip(got, want)]
        for key, ok in zip(("size", "colour", "shape"), same):
            hits[key] += ok
        hits["all three"] += all(same)
    if n == 0:
        raise ValueError("no region_caption records that describe a present object")
    return {"records": n, **{k: 100.0 * v / n for k, v in hits.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions", type=Path)
    args = ap.parse_args(argv)
    records = [json.loads(line) for line in args.predictions.read_text().splitlines() if line.strip()]
    result = score(records)
    print(f"{result['records']} region descriptions: " + ", ".join(
        f"{k} {v:.1f} %" for k, v in result.items() if k != "records"))


if __name__ == "__main__":
    main()
