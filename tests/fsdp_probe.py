"""Run under ``torchrun --nproc_per_node 2`` (gloo on CPU): shard a tiny PixelSail with FSDP2 - one unit per
decoder layer (and per untied embedding), and the whole model as one unit, with tied and untied embeddings - run a
forward and backward on a real batch, and write what each rank held to ``OUT/rank{r}.json``: parameter bytes of the
full model, of its local shards at rest, and the most bytes gathered whole at once while a decoder layer's
projection ran (forward and backward).

``python tests/fsdp_probe.py OUT``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pixelsail.train import leave_distributed


def probe(per_layer: bool, tied: bool = True) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    from model_utils import box_mask, random_image, res_sample, tiny_model
    from pixelsail.distributed import gathered_parameter_bytes, local_parameter_bytes, shard_model

    # untied: the question pool embeds again and the [SEG] bag-of-words loss reads the LM head again
    extra = {} if tied else {"tie_word_embeddings": False, "seg_query_pool": "embedding", "seg_bow_weight": 0.1}
    model = tiny_model(seed=0, num_hidden_layers=4, intermediate_size=512, **extra)
    llm = model.backbone.llm
    embedding_bytes = 0 if tied else llm.get_input_embeddings().weight.numel() * 4      # fp32; the LM head alike
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    layer_linears = [m for layer in model.backbone.llm.model.layers for m in layer.modules()
                     if isinstance(m, nn.Linear)]
    shard_model(model, init_device_mesh("cpu", (dist.get_world_size(),)), per_layer=per_layer)
    peak = {"forward": 0, "backward": 0}

    def measure(phase: str):
        def hook(*_):
            peak[phase] = max(peak[phase], gathered_parameter_bytes(model))
        return hook

    for m in layer_linears:
        m.register_forward_pre_hook(measure("forward"))
        m.register_full_backward_pre_hook(measure("backward"))
    proc = model.processor
    image = random_image(64, 64, seed=dist.get_rank())
    batch = proc.collate([proc(res_sample(image, box_mask(64, 64, 0, 32, 0, 32)))])
    model.train()
    out = model(**batch)
    out.loss.backward()
    return {"full": full, "local": local_parameter_bytes(model), "peak_forward": peak["forward"],
            "peak_backward": peak["backward"], "loss": float(out.loss.detach()), "embedding_bytes": embedding_bytes,
            "layer_bytes": sum(p.numel() * p.element_size() for m in layer_linears for p in m.parameters())}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = {"per_layer": probe(True), "one_unit": probe(False), "untied": probe(True, tied=False),
              "untied_one_unit": probe(False, tied=False)}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    leave_distributed()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]))
