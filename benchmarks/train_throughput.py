"""Training throughput of a recipe (samples/s: data + forward + backward + optimizer, as the engine runs a step),
optionally against another git revision in the same run.

    python -m benchmarks.train_throughput                                   # configs/shapes-tiny.yaml, both stages
    python -m benchmarks.train_throughput --against HEAD~3 --rounds 3      # ratio to an older revision

With ``--against REV`` the revision is checked out into a temporary git worktree and the two codes are measured
in alternating child processes (this file's measurement, each importing its own ``pixelsail``), so machine load
hits both alike; the ratio of each round is printed, then the median. Everything here uses only API that has been
stable across the project's history (``load_yaml``, ``build_model``, the mixture's ``BatchStream``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(config: str, stage: str, steps: int, warmup: int, batch_size: int, precision: str) -> dict:
    """Seconds per training step of ``config``'s ``stage`` ("main" or "first": the warm-up datasets)."""
    import torch

    from pixelsail.config import load_yaml, replace
    from pixelsail.data.mixture import BatchStream, Mixture, MixtureSampler, SamplerState, micro_batches
    from pixelsail.hardware import autocast_dtype
    from pixelsail.model import build_model
    from pixelsail.train import build_optimizer

    try:
        import pixelsail.experts.cache  # noqa: F401  (registers the "distilled" dataset where it exists)
    except ImportError:
        pass
    run = load_yaml(config)
    datasets = run.data.warmup_datasets if stage == "first" and run.data.warmup_datasets else run.data.datasets
    torch.manual_seed(0)
    model = build_model(run.model).train()
    optimizer = build_optimizer(model, 1e-4, (0.9, 0.999), 0.0)
    proc = model.processor
    mixture = Mixture.from_config(replace(run.data, datasets=datasets))
    stream = BatchStream(MixtureSampler(mixture, batch_size, 0), proc, proc.collate, rank=0, world_size=1,
                         grad_accum=1, length_grouped=True, start=SamplerState(), group_batches=8)
    steps_iter = micro_batches(stream, 0, 0)
    dtype = autocast_dtype(precision, "cpu")
    autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def step() -> None:
        batch = next(steps_iter)[1][0]
        with autocast:
            out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    return {"seconds_per_step": seconds, "samples_per_s": batch_size / seconds}


def _child(src: Path, args: argparse.Namespace, stage: str) -> dict:
    """Run :func:`measure` in a fresh process importing ``pixelsail`` from ``src``."""
    code = (f"import json, sys; sys.path[:0] = [{str(src)!r}, {str(REPO)!r}]\n"
            "from benchmarks.train_throughput import measure\n"
            f"print(json.dumps(measure({args.config!r}, {stage!r}, {args.steps}, {args.warmup}, {args.batch_size}, "
            f"{args.precision!r})))")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH="")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measurement under {src} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/shapes-tiny.yaml")
    ap.add_argument("--stage", choices=["first", "main", "both"], default="both")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--against", help="a git revision to compare with (checked out into a temporary worktree)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    stages = ["first", "main"] if args.stage == "both" else [args.stage]
    here = REPO / "src"
    if not args.against:
        for stage in stages:
            r = _child(here, args, stage)
            print(f"{args.config} [{stage} stage], {args.threads} thread(s): {r['samples_per_s']:.1f} samples/s "
                  f"({1000 * r['seconds_per_step']:.0f} ms per step of {args.batch_size})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "against"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.against], check=True,
                       capture_output=True)
        try:
            for stage in stages:
                ratios = []
                for k in range(args.rounds):
                    new, old = _child(here, args, stage), _child(tree / "src", args, stage)
                    ratios.append(new["samples_per_s"] / old["samples_per_s"])
                    print(f"[{stage}] round {k + 1}: this tree {new['samples_per_s']:.1f} samples/s, "
                          f"{args.against} {old['samples_per_s']:.1f} -> x{ratios[-1]:.2f}")
                print(f"[{stage}] this tree / {args.against}: median x{statistics.median(ratios):.2f} "
                      f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {args.rounds} rounds, {args.threads} thread(s))")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


if __name__ == "__main__":
    main()
