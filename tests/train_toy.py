"""A tiny stand-in for PixelSail (same training API) and a tiny registered dataset, for the training-engine tests.

Also a launcher: ``python tests/train_toy.py CONFIG.yaml [key=value ...] [--resume] [--dropout P]`` (or under
``torchrun``) trains the toy model with :func:`pixelsail.train.train` and writes every rank's final weights to
``OUTPUT_DIR/weights_rank{r}.safetensors``.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample

STEP_SLEEP_ENV = "TOY_STEP_SLEEP"   # seconds each forward sleeps (lets a test kill a run mid-way)


class ToyDataset:
    """Sample i: an image of (6 + 2 * (i % 4)) x 5 pixels whose values are a function of i -> variable lengths."""

    def __init__(self, size: int = 40):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.size:
            raise IndexError(i)
        rng = np.random.default_rng(i)
        h = 6 + 2 * (i % 4)
        image = rng.integers(0, 256, size=(h, 5, 3), dtype=np.uint8)
        return Sample(image=image, turns=[("q", "a")], task="vqa", image_id=f"toy{i}", meta={"index": i})


@register_dataset("toy")
def toy_dataset(size: int = 40) -> ToyDataset:
    return ToyDataset(size)


class ToyProcessor:
    """Rows of the image -> tokens; the target mixes the image with a random draw (seeded processing is tested)."""

    def __call__(self, sample: Sample) -> dict:
        x = torch.from_numpy(sample.image.astype(np.float32) / 255.0).mean(dim=1)   # (H, 3)
        target = x.mean() + 0.1 * torch.rand(())
        return {"x": x, "target": target, "length": x.shape[0], "index": sample.meta["index"]}

    def collate(self, feats: list[dict]) -> dict:
        n, length = len(feats), max(f["length"] for f in feats)
        x = torch.zeros(n, length, 3)
        mask = torch.zeros(n, length)
        for i, f in enumerate(feats):
            x[i, :f["length"]] = f["x"]
            mask[i, :f["length"]] = 1.0
        return {"x": x, "mask": mask, "target": torch.stack([f["target"] for f in feats])}


@dataclass
class ToyOutput:
    loss: torch.Tensor
    losses: dict


class ToyModel(nn.Module):
    """Embedding + tied projections + masked mean pooling; loss = per-sample MSE + 0.1 L1, averaged over samples."""

    def __init__(self, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.pos = nn.Embedding(16, width)
        self.mix = nn.Linear(width, width)
        self.mix_again = nn.Linear(width, width, bias=False)
        self.mix_again.weight = self.mix.weight          # tied, like tied word embeddings
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, 1)
        self.processor = ToyProcessor()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> ToyOutput:
        sleep = float(os.environ.get(STEP_SLEEP_ENV, "0"))
        if sleep:
            time.sleep(sleep)
        h = self.embed(x) + self.pos(torch.arange(x.shape[1], device=x.device))       # (B, L, W)
        h = self.drop(torch.tanh(self.mix_again(torch.tanh(self.mix(self.norm(h))))))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)              # (B, W)
        pred = self.head(pooled).squeeze(-1).float()
        mse = ((pred - target) ** 2).mean()
        l1 = (pred - target).abs().mean()
        return ToyOutput(loss=mse + 0.1 * l1, losses={"mse": mse.detach(), "l1": l1.detach()})


def build_toy(dropout: float):
    def build(run) -> ToyModel:
        return ToyModel(width=run.model.hidden_size, dropout=dropout)

    return build


def main(argv: list[str]) -> None:
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from pixelsail.config import RunConfig, apply_overrides, load_yaml
    from pixelsail.train import leave_distributed, train

    torch.set_num_threads(1)
    resume = "--resume" in argv
    dropout = 0.0
    if "--dropout" in argv:
        dropout = float(argv[argv.index("--dropout") + 1])
    args = [a for i, a in enumerate(argv) if a != "--resume" and a != "--dropout"
            and (i == 0 or argv[i - 1] != "--dropout")]
    run = apply_overrides(load_yaml(args[0], RunConfig), args[1:])

    captured = {}

    def build(r):
        captured["model"] = build_toy(dropout)(r)
        return captured["model"]

    summary = train(run, resume=resume, build=build)
    rank = int(os.environ.get("RANK", 0))
    model = captured["model"]
    # without cpu_offload every rank (not only rank 0) gets the full weights, even when FSDP-sharded
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items() if k != "mix_again.weight"}
    save_file(state, os.path.join(run.train.output_dir, f"weights_rank{rank}.safetensors"))
    print(f"rank {rank}: steps={summary.steps} final_loss={summary.final_loss}")
    # drop the FSDP-wrapped model first: freed during interpreter teardown, its pending collective work aborted a
    # rank in CI ("terminate called without an active exception")
    del model, state
    captured.clear()
    leave_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
