"""FSDP2 sharding of a Pixel-SAIL model: one unit per decoder layer, the rest in the root unit.

Per-layer units are what makes per-rank memory shrink with more ranks: at rest every rank holds 1/N of every
parameter (that is true of a single unit too), and during the forward and backward only the root unit and the one
layer being computed are gathered whole, instead of the whole model at once.

Two facts about PixelSail decide the units:

* :func:`pixelsail.model.decoder.decoder_layer` computes a layer from its weights without calling the layer's own
  ``forward``; it calls the linear projections as modules but reads the two RMSNorm weights directly. So a layer's
  unit is the *group* of its ``nn.Linear`` modules (FSDP2 gathers a group when the first of them runs and frees it
  after the last), and the norm weights (2 x hidden per layer) stay in the root unit, which is gathered for the
  whole forward.
* The token embedding is tied to the LM head in the Qwen2.5 0.5B/3B checkpoints: one tensor used at the start and
  at the end of the forward, so it stays in the root unit. Untied (Qwen2.5-7B: 2 x 545M parameters), the embedding
  and the LM head are a unit each, gathered only while they run (both may run several times per forward: the
  question pool embeds again, the [SEG] bag-of-words loss reads the LM head again; FSDP2 gathers them each time).
  In backward, an embedding used again after the layers (the question pool) stays gathered from that use to the
  end of the backward: FSDP2 frees a unit after the backward through its inputs, and token ids have none.
* The vision modules (patch embedding, upsampler, mask head) are small and stay in the root unit.

The model's keep-every-parameter-in-the-graph term (``_touch_all_parameters``, which DDP and FSDP2's reduce-scatter
need so that every rank has a gradient for every root parameter) would read the resharded layer parameters as
DTensors; :func:`shard_model` restricts it to the parameters that are gathered at that point (the root unit).
Every layer runs on every batch, so their parameters always have gradients without it.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn


def layer_units(model: nn.Module) -> list[list[nn.Module]]:
    """One group of ``nn.Linear`` modules per decoder layer (the elements of every ``ModuleList`` named ``layers``)."""
    units = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers":
            for layer in module:
                linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
                if linears:
                    units.append(linears)
    return units


def embedding_units(model: nn.Module) -> list[nn.Module]:
    """The input embedding and the output head of every Hugging Face LM inside ``model``, unless they are tied."""
    units = []
    for module in model.modules():
        get_in, get_out = getattr(module, "get_input_embeddings", None), getattr(module, "get_output_embeddings", None)
        if not (callable(get_in) and callable(get_out)):
            continue
        emb, head = get_in(), get_out()
        if emb is not None and head is not None and emb.weight is not head.weight:
            units += [emb, head]
    return units


def _is_sharded(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def touch_gathered_parameters(model: nn.Module) -> torch.Tensor | float:
    """Zero that depends on every gathered (non-DTensor) trainable parameter of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad and not _is_sharded(p)]
    return sum(p.sum() for p in params) * 0.0 if params else 0.0


def shard_model(model: nn.Module, mesh, *, per_layer: bool = True) -> nn.Module:
    """``fully_shard`` each decoder layer's linears and untied embeddings (``per_layer``), then the root, in place."""
    from torch.distributed.fsdp import fully_shard

    if per_layer:
        for unit in [*layer_units(model), *embedding_units(model)]:
            fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if callable(getattr(model, "_touch_all_parameters", None)):
        model._touch_all_parameters = partial(touch_gathered_parameters, model)
    return model


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank holds now: the local shard of a DTensor, the whole of a plain tensor."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if _is_sharded(p) else p
        total += local.numel() * local.element_size()
    return total


def gathered_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters currently gathered whole on this rank (every plain, non-DTensor parameter)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if not _is_sharded(p))


__all__ = ["embedding_units", "gathered_parameter_bytes", "layer_units", "local_parameter_bytes", "shard_model",
           "touch_gathered_parameters"]
