"""A trained model with new config switches turned on, for the fine-tune A/B (docs/TRAINING.md, sessions 14-15).

    python -m benchmarks.switch_copy src/pixelsail/assets/shapes-tiny runs/with-position mask_position
    pixelsail train configs/shapes-tiny.yaml train.init_from=runs/with-position train.max_steps=800 \\
        train.text_warmup_steps=0 train.lr=1e-3 train.output_dir=runs/ft-position          # and the same for a plain copy

The switches this works for add a zero-initialised part (``mask_position``, ``mask_prompts``, ``patch_position``,
``vp_geometry=tags``),
so the copy computes exactly what the original does until training moves the new part: the A/B then measures what
the switch adds on top of a trained model in a few thousand samples instead of a full run from scratch.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from pixelsail.model import PixelSail


def with_switches(model: PixelSail, switches: list[str], seed: int = 0) -> PixelSail:
    """``model`` rebuilt with ``switches`` on, each a boolean field's name or ``name=value`` for a string field that
    is off (``""``), e.g. ``vp_geometry=tags``; its weights copied, new parts as initialised."""
    changes: dict[str, object] = {}
    for item in switches:
        name, has_value, value = item.partition("=")
        current = getattr(model.config, name, None)
        if isinstance(current, bool) and not has_value:
            changes[name] = True
        elif isinstance(current, str) and has_value and value:
            changes[name] = value
        else:
            raise ValueError(f"{item!r} is not a boolean switch of PixelSailConfig (or name=value for a string one)")
        if current:
            raise ValueError(f"{name!r} is already on in this model")
    torch.manual_seed(seed)
    copy = PixelSail(dataclasses.replace(model.config, **changes), model.processor.tokenizer)
    unexpected = copy.load_state_dict(model.state_dict(), strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"the switched model lacks parameters of the original: {unexpected}")
    return copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a pixelsail model directory")
    ap.add_argument("out", help="where the copy is saved")
    ap.add_argument("switches", nargs="+", help="PixelSailConfig switches to turn on: a boolean's name or name=value")
    args = ap.parse_args(argv)
    original = PixelSail.from_pretrained(args.model)
    copy = with_switches(original, args.switches)
    new = sorted(set(copy.state_dict()) - set(original.state_dict()))
    copy.save_pretrained(args.out)
    print(f"{args.out}: {args.model} with {', '.join(args.switches)} on; new parameters: {', '.join(new)}")


if __name__ == "__main__":
    main()
