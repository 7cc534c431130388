"""Per-query latency of Pixel-SAIL 0.5B against LISA- and Sa2VA-shaped peers at their real sizes (random weights).

    python -m benchmarks.peers_bench               # a 640x480 image, warm-up + 2 repeats (~10 min, 2-core CPU)
    python -m benchmarks.peers_bench --quick       # warm-up + 1 repeat
    python -m benchmarks.peers_bench --size tiny   # tiny widths and a 64x48 image: seconds (what the tests run)

A query is image in -> mask out with the answer forced to "Sure, [SEG]." on both sides (decoding would cost the
same: same LLM shape, same text). The follow-up is a second question on the same image: Pixel-SAIL reuses its image
prefix's KV cache; the peer reuses both encoders' outputs and its LLM's KV cache of the image tokens. In every repeat
Pixel-SAIL and the peer run back to back, and the ratios are taken inside the repeat (benchmarks.measure.interleaved).
"""
from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch

from benchmarks import flops
from benchmarks.measure import Bench, interleaved, ratio_stats
from benchmarks.peers import PEERS, PeerSizes
from benchmarks.run import FOLLOW_UP, QUESTION, machine_description, make_model, model_config, pixelsail_query
from pixelsail.hardware import fast_bf16
from pixelsail.tokens import SEG

ANSWER = f"Sure, {SEG}."
OURS = {"real": "0.5b", "tiny": "quick"}
IMAGE = {"real": (480, 640), "tiny": (48, 64)}


def _one_mask(masks: list, who: str) -> None:
    if len(masks) != 1:
        raise RuntimeError(f"{who} returned {len(masks)} masks for one [SEG]")


def compare(size: str, image_hw: tuple[int, int], bench: Bench, peers: list[str]) -> dict:
    """Pixel-SAIL against each peer on one random image: times, per-repeat ratios, parameter counts."""
    cfg = model_config(OURS[size])
    model = make_model(cfg, bench).eval()
    image = np.random.default_rng(0).integers(0, 256, size=(*image_hw, 3), dtype=np.uint8)
    ours: dict = {}

    def first():
        ours["prefix"], resp = pixelsail_query(model, image)
        _one_mask(resp.masks, "pixelsail")

    def follow_up():
        resp = model.respond(ours["prefix"], FOLLOW_UP, history=[(QUESTION, ANSWER)], answer_prefix=ANSWER,
                             max_new_tokens=0)
        _one_mask(resp.masks, "pixelsail follow-up")

    grid = model.processor.image_inputs(image).grid
    result = {"size": size, "image": image_hw, "vision_tokens": grid[0] * grid[1],
              "params_pixelsail": flops.parameter_count(model), "rows": []}
    for key in peers:
        torch.manual_seed(1)
        peer = PEERS[key](cfg, model.processor, PeerSizes.named(size)).to(bench.device).eval()
        theirs: dict = {}

        def peer_first():
            theirs["state"], masks = peer.segment(image, QUESTION, ANSWER)
            _one_mask(masks, peer.name)

        def peer_follow_up():
            _one_mask(peer.respond(theirs["state"], FOLLOW_UP, ANSWER, history=[(QUESTION, ANSWER)]), peer.name)

        bench.log(f"[peers] Pixel-SAIL {OURS[size]} vs {peer.name} on a {image_hw[1]}x{image_hw[0]} image")
        with torch.no_grad(), bench.autocast():
            times = interleaved({"pixelsail": first, "pixelsail_follow_up": follow_up, "peer": peer_first,
                                 "peer_follow_up": peer_follow_up}, bench)
        row = {"peer": peer.name, "params": peer.component_parameters(), "times": times,
               "speedup": ratio_stats(times["peer"], times["pixelsail"]),
               "follow_up_speedup": ratio_stats(times["peer_follow_up"], times["pixelsail_follow_up"])}
        bench.log(f"  {peer.name} / Pixel-SAIL: first query {row['speedup'].fmt(digits=2, unit='x')}, "
                  f"follow-up {row['follow_up_speedup'].fmt(digits=2, unit='x')}")
        result["rows"].append(row)
        del peer
    return result


def render(result: dict, meta: dict) -> str:
    """The markdown table (times: median (min-max) over repeats; ratios per repeat, then summarised)."""
    h, w = result["image"]
    lines = [f"- date: {meta['date']}; machine: {meta['machine']}; clock: {meta['clock']}; "
             f"{meta['repeats']} repeat(s) after a warm-up; wall time {meta['wall_s']:.0f} s",
             f"- command: `{meta['command']}`",
             f"- image {w}x{h}: Pixel-SAIL {OURS[result['size']]} ({result['params_pixelsail'] / 1e6:.0f}M "
             f"parameters) sees {result['vision_tokens']} vision tokens", "",
             "| peer | peer params (vision / LLM / prompt MLP + mask decoder) | Pixel-SAIL query | peer query | "
             "**peer / Pixel-SAIL** | Pixel-SAIL follow-up | peer follow-up | **peer / Pixel-SAIL, follow-up** |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        p, t = row["params"], row["times"]
        lines.append(f"| {row['peer']} | {(p['vision'] + p['llm'] + p['mask_decoder']) / 1e6:.0f}M "
                     f"({p['vision'] / 1e6:.0f} / {p['llm'] / 1e6:.0f} / {p['mask_decoder'] / 1e6:.1f}) | "
                     f"{t['pixelsail'].fmt(1, 2, ' s')} | {t['peer'].fmt(1, 2, ' s')} | "
                     f"**{row['speedup'].fmt(digits=2, unit='x')}** | {t['pixelsail_follow_up'].fmt(1e3, 0, ' ms')} | "
                     f"{t['peer_follow_up'].fmt(1e3, 0, ' ms')} | **{row['follow_up_speedup'].fmt(digits=2, unit='x')}** |")
    return "\n".join(lines) + "\n"


def _image_size(text: str) -> tuple[int, int]:
    """'640x480' -> (480, 640) as (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if min(w, h) < 16:
        raise argparse.ArgumentTypeError(f"image size must be at least 16x16, got {text!r}")
    return h, w


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat after the warm-up")
    parser.add_argument("--size", choices=["real", "tiny"], default="real", help="real sizes or tiny widths")
    parser.add_argument("--image", type=_image_size, help="WIDTHxHEIGHT (default 640x480, tiny 64x48)")
    parser.add_argument("--peers", nargs="+", choices=sorted(PEERS), default=sorted(PEERS))
    parser.add_argument("--repeats", type=int, help="timed repeats (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast even where bf16 is fast")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="process CPU time (default: other processes' load does not count) or wall-clock")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    repeats = args.repeats or (1 if args.quick else 2)
    bench = Bench(device=device, repeats=repeats, ref_seconds=0.0, clock=args.clock,
                  autocast_dtype=torch.bfloat16 if fast_bf16(device) and not args.fp32 else None)
    started = time.perf_counter()
    result = compare(args.size, args.image or IMAGE[args.size], bench, args.peers)
    h, w = result["image"]
    command = ("python -m benchmarks.peers_bench" + (" --quick" if args.quick else "")
               + (f" --size {args.size}" if args.size != "real" else "") + f" --image {w}x{h}"
               + f" --threads {args.threads}" + (f" --repeats {args.repeats}" if args.repeats else "")
               + (" --fp32" if args.fp32 else ""))
    machine = machine_description(device, args.threads, "fp32 (--fp32)" if args.fp32 else None)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine, "clock": bench.clock, "repeats": repeats,
            "command": command, "wall_s": time.perf_counter() - started}
    result["meta"] = meta
    result["table"] = render(result, meta)
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
