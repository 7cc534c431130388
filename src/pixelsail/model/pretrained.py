"""Saving and loading a Pixel-SAIL: config + tokenizer + safetensors in one directory, or a plain Hugging Face LLM
to start from (the ``from_pretrained`` / ``save_pretrained`` pair of transformers models)."""
from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from transformers import AutoConfig, AutoModelForCausalLM

from pixelsail.config import PixelSailConfig, from_dict, to_dict
from pixelsail.tokenizer import load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# a checkpoint's decoder is rebuilt as it was saved and its tokenizer read back, so these settings are always the
# checkpoint's, whatever settings it is loaded with
CHECKPOINT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "rope_theta", "rms_norm_eps", "max_position_embeddings",
                     "tie_word_embeddings", "initializer_range", "num_vp_tokens", "token_ids")
log = logging.getLogger("pixelsail.model")


def changed_settings(saved: PixelSailConfig, wanted: PixelSailConfig) -> dict[str, tuple]:
    """{setting: (saved, wanted)} for each model setting ``wanted`` changes, the checkpoint's own fields left out;
    a section's settings by dotted name ("distill.enabled")."""
    a, b = to_dict(saved), to_dict(wanted)
    return {k: v for f in fields(PixelSailConfig) if f.name not in CHECKPOINT_FIELDS
            for k, v in _differences(f.name, a[f.name], b[f.name]).items()}


def _differences(name: str, a, b) -> dict[str, tuple]:
    if isinstance(a, dict) and isinstance(b, dict) and name != "distill.teachers":
        return {k: v for key in dict.fromkeys([*a, *b])
                for k, v in _differences(f"{name}.{key}", a.get(key), b.get(key)).items()}
    return {} if a == b else {name: (a, b)}


class PretrainedIO:
    """Mixed into :class:`pixelsail.model.PixelSail` (which provides ``config``, ``backbone`` and ``tokenizer``)."""

    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Config, tokenizer and safetensors weights; ``dtype`` (e.g. float16) stores smaller weights, which
        :meth:`from_pretrained` casts back to the model's dtype. ``state_dict``: the full weights to write instead of
        the module's own (FSDP-sharded training gathers them; its parameters are shards)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"pixelsail": to_dict(self.config), "llm": self.backbone.llm.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        if dtype is None and state_dict is None:
            save_model(self, str(directory / WEIGHTS_FILE))
        else:
            source = self.state_dict() if state_dict is None else state_dict
            state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous()
                     for k, v in source.items()}
            if self.config.tie_word_embeddings:
                state.pop("backbone.llm.lm_head.weight", None)
            save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu",
                        attn_implementation: str | None = None,
                        config: PixelSailConfig | None = None) -> "PretrainedIO":
        """The model saved in ``directory``. ``config``: build it with these settings instead of the saved ones (a
        fine-tune that turns a switch on or off; the decoder's shape and the tokenizer stay the checkpoint's,
        ``CHECKPOINT_FIELDS``): the parameters of modules the new settings add keep their fresh initialisation and
        the saved ones they drop are left out, both logged; a parameter whose shape would change is an error."""
        directory = Path(directory)
        cfg_path = directory / CONFIG_FILE
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such model directory")
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory} is not a pixelsail checkpoint: {CONFIG_FILE} is missing")
        meta = json.loads(cfg_path.read_text())
        if "pixelsail" not in meta:
            raise ValueError(f"{cfg_path} is not a pixelsail config (no 'pixelsail' section); "
                             "to start from a plain LLM use PixelSail.from_llm")
        saved = from_dict(PixelSailConfig, meta["pixelsail"])
        changed = changed_settings(saved, config) if config is not None else {}
        if changed:
            own = {k: v for k, v in meta["pixelsail"].items() if k in CHECKPOINT_FIELDS}
            config = from_dict(PixelSailConfig, {**to_dict(config), **own})
        else:
            config = saved
        if attn_implementation:
            config.attn_implementation = attn_implementation
        llm_meta = dict(meta["llm"])
        llm_cfg = AutoConfig.for_model(llm_meta.pop("model_type"), **llm_meta)
        llm = AutoModelForCausalLM.from_config(llm_cfg, attn_implementation="sdpa")
        tokenizer = load_tokenizer(directory, config.num_vp_tokens)
        model = cls(config, tokenizer, llm)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing")
        if changed:
            _load_changed(model, weights, changed)
        else:
            missing, unexpected = load_model(model, str(weights), strict=False)
            if missing or unexpected:
                raise ValueError(f"{weights} does not match the config: missing {sorted(missing)[:5]}, "
                                 f"unexpected {sorted(unexpected)[:5]}")
        return model.to(device).eval()

    @classmethod
    def from_llm(cls, path: str | Path, config: PixelSailConfig | None = None, *,
                 dtype: torch.dtype = torch.float32) -> "PretrainedIO":
        """Start from a local Hugging Face decoder checkpoint (config.json, safetensors, tokenizer files)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a local Hugging Face model directory")
        config = config or PixelSailConfig()
        llm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, attn_implementation="sdpa",
                                                   dtype=dtype)
        tokenizer = load_tokenizer(path, config.num_vp_tokens)
        rows = llm.get_input_embeddings().num_embeddings
        if rows < len(tokenizer):
            llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        c = llm.config
        config.vocab_size = llm.get_input_embeddings().num_embeddings
        config.hidden_size = c.hidden_size
        config.num_hidden_layers = c.num_hidden_layers
        config.num_attention_heads = c.num_attention_heads
        config.num_key_value_heads = getattr(c, "num_key_value_heads", c.num_attention_heads)
        config.intermediate_size = c.intermediate_size
        config.rms_norm_eps = getattr(c, "rms_norm_eps", config.rms_norm_eps)
        config.tie_word_embeddings = bool(getattr(c, "tie_word_embeddings", config.tie_word_embeddings))
        return cls(config, tokenizer, llm)


def _load_changed(model: torch.nn.Module, weights: Path, changed: dict[str, tuple]) -> None:
    """Load saved ``weights`` into a model built with ``changed`` settings: added parameters stay fresh, dropped ones
    are skipped (both logged), a changed shape is an error naming the settings."""
    own = model.state_dict()
    with safe_open(str(weights), framework="pt") as f:
        reshaped = [k for k in f.keys() if k in own and tuple(f.get_slice(k).get_shape()) != tuple(own[k].shape)]
    settings = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
    if reshaped:
        raise ValueError(f"{weights} cannot be loaded with the changed settings ({settings}): "
                         f"{len(reshaped)} parameters change shape, e.g. {reshaped[0]}")
    added, dropped = load_model(model, str(weights), strict=False)   # tied weights saved under one name count once
    log.warning("%s loaded with changed settings (%s); %d parameters start fresh%s; %d saved ones are left out%s",
                weights.parent, settings, len(added), f" ({_modules(sorted(added))})" if added else "",
                len(dropped), f" ({_modules(sorted(dropped))})" if dropped else "")


def _modules(keys: list[str]) -> str:
    """The distinct modules of parameter names, e.g. "target_look.proj, seg_box.mlp"."""
    return ", ".join(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))


__all__ = ["CHECKPOINT_FIELDS", "CONFIG_FILE", "PretrainedIO", "WEIGHTS_FILE", "changed_settings"]
