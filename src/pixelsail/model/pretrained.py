"""Saving and loading a Pixel-SAIL: config + tokenizer + safetensors in one directory, or a plain Hugging Face LLM
to start from (the ``from_pretrained`` / ``save_pretrained`` pair of transformers models)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model
from transformers import AutoConfig, AutoModelForCausalLM

from pixelsail.config import PixelSailConfig, from_dict, to_dict
from pixelsail.tokenizer import load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


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
                        attn_implementation: str | None = None) -> "PretrainedIO":
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
        config = from_dict(PixelSailConfig, meta["pixelsail"])
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


__all__ = ["CONFIG_FILE", "PretrainedIO", "WEIGHTS_FILE"]
