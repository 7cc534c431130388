"""Do region descriptions name the right object? Size, colour and shape read off shapes-world descriptions.

    python -m benchmarks.region_attributes runs/eval/predictions.jsonl

The shapes world describes a region as "<vp_k>: a large red circle in the top left, ...". METEOR rewards the shared
words of a wrong description ("a ... in the ... left"); this counts how often the first noun phrase names the
target's size, colour and shape (each, and all three together) and where it is (the 3x3 cell after "in the",
its row word and its column word; chance 11 / 33 / 33 %), over the ``region_caption`` records of a
``pixelsail eval --task shapes`` predictions file.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pixelsail.data.shapes import COLOR_NAMES, SHAPES, SIZES
from pixelsail.data.shapes_scene import POSITIONS

_PHRASE = re.compile(r"\ba (\w+) (\w+) (\w+)")
# cell name -> (row, column) of the 3x3 grid
CELLS = {name: (r, c) for r, row in enumerate(POSITIONS) for c, name in enumerate(row)}
_PLACE = re.compile(r"\ba \w+ \w+ \w+ in the (" + "|".join(CELLS) + r")\b")


def first_phrase(text: str) -> tuple[str, str, str] | None:
    """(size, colour, shape) of the first "a <size> <colour> <shape>" in ``text``, or None."""
    m = _PHRASE.search(text)
    if m is None or m.group(1) not in SIZES or m.group(2) not in COLOR_NAMES or m.group(3) not in SHAPES:
        return None
    return m.group(1), m.group(2), m.group(3)


def first_place(text: str) -> tuple[int, int] | None:
    """(row, column) of the cell named after the first "a <size> <colour> <shape> in the ...", or None."""
    m = _PLACE.search(text)
    return None if m is None else CELLS[m.group(1)]


def score(records: list[dict]) -> dict[str, float]:
    """Percent of region_caption records whose prediction names the reference's size / colour / shape / all three,
    and its cell / row / column (over the records whose reference names a cell)."""
    hits = {"size": 0, "colour": 0, "shape": 0, "all three": 0}
    where = {"cell": 0, "row": 0, "column": 0}
    placed = 0
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
        want_at = first_place(r["answer"])
        if want_at is not None:
            placed += 1
            got_at = first_place(r["text"]) or (-1, -1)
            where["cell"] += got_at == want_at
            where["row"] += got_at[0] == want_at[0]
            where["column"] += got_at[1] == want_at[1]
    if n == 0:
        raise ValueError("no region_caption records that describe a present object")
    out = {"records": n, **{k: 100.0 * v / n for k, v in hits.items()}}
    if placed:
        out.update({k: 100.0 * v / placed for k, v in where.items()})
    return out


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
