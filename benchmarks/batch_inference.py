"""Batched inference against one query at a time: queries/s of the shipped model through the Predictor.

    python -m benchmarks.batch_inference [--device cuda] [--batch 16] [--queries 32] [--quick]

Two workloads, each timed both ways in the same repeat (so machine load hits both alike): many questions about one
image (``Predictor.ask_many``: one prefill, the prefix shared by the batch) and one question per image over many
images (``Predictor.ask_batch``). The one-at-a-time side is ``Predictor.ask`` in a loop with a warm prefix cache for
the shared image, as a chat would run. Every batched answer is checked against the one-at-a-time answer.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pixelsail import Predictor
from pixelsail.data.registry import build_dataset

QUESTIONS = ("Please segment the red circle.", "What colour is the square?", "Please segment all circles.",
             "Please segment the small blue triangle.", "Please segment the large green square.",
             "Is there a triangle in the image?")


def _timed(fn, device: torch.device) -> tuple[float, list]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def run(device: str = "cpu", batch: int = 16, queries: int = 32, repeats: int = 3) -> dict[str, dict[str, float]]:
    """{workload: {"single_qps", "batched_qps", "speedup"}} (medians over repeats)."""
    dev = torch.device(device)
    predictor = Predictor(device=device, max_new_tokens=16, prefix_cache_size=queries + 1)
    ds = build_dataset("shapes", split="val", image_size=128, size=queries)
    images = [ds[i].image for i in range(queries)]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(queries)]
    workloads = {
        "one image, many questions": (lambda: [predictor.ask(images[0], q) for q in questions],
                                      lambda: predictor.ask_many(images[0], questions, batch_size=batch)),
        "one question per image": (lambda: [predictor.ask(im, q) for im, q in zip(images, questions)],
                                   lambda: predictor.ask_batch(images, questions, batch_size=batch)),
    }
    results = {}
    for name, (single, batched) in workloads.items():
        single(), batched()  # warm-up (and the shared image's prefix, for both sides)
        ratios, single_qps, batched_qps = [], [], []
        fresh = name == "one question per image"  # both sides prefill every image
        for _ in range(repeats):
            if fresh:
                predictor.clear_cache()
            t_single, ref = _timed(single, dev)
            if fresh:
                predictor.clear_cache()
            t_batched, got = _timed(batched, dev)
            mismatched = [i for i, (a, b) in enumerate(zip(ref, got)) if a.text != b.text]
            if mismatched:
                raise AssertionError(f"{name}: batched answers differ at {mismatched[:5]}")
            single_qps.append(queries / t_single)
            batched_qps.append(queries / t_batched)
            ratios.append(t_single / t_batched)
        results[name] = {"single_qps": statistics.median(single_qps), "batched_qps": statistics.median(batched_qps),
                         "speedup": statistics.median(ratios)}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_inference", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="8 queries in batches of 4, 1 repeat")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    batch, queries, repeats = (4, 8, 1) if args.quick else (args.batch, args.queries, args.repeats)
    results = run(args.device, batch, queries, repeats)
    print(f"shapes-tiny on {args.device}, {queries} queries, batches of {batch}, max 16 new tokens, "
          f"median of {repeats}")
    for name, r in results.items():
        print(f"{name}: one at a time {r['single_qps']:.1f} queries/s, batched {r['batched_qps']:.1f} queries/s "
              f"({r['speedup']:.2f}x)")
    return results


if __name__ == "__main__":
    main()
