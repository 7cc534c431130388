"""LISA- and Sa2VA-shaped peers at the 0.5B LLM size (random weights), for per-query latency against Pixel-SAIL.

    LISA:   image -> CLIP ViT-L/14 (224 px) -> projector -> LLM -> [SEG] state -> MLP -> sparse prompt
            image -> SAM ViT-H (1024 px) -> 256-d embedding ---------------------> SAM mask decoder -> mask
    Sa2VA:  image -> InternViT-300M (448 px, one tile) -> pixel shuffle -> MLP -> LLM -> [SEG] -> MLP -> prompt
            image -> SAM2 Hiera-L (1024 px) -> FPN -> embedding + stride-4/8 features --> SAM2 mask decoder -> mask

Both use a Qwen2.5-0.5B-shaped LLM run by Pixel-SAIL's own decoder code (so the LLM costs the same per token on both
sides; causal attention throughout, as LLaVA-style models use; the real LISA is 7B/13B; InternVL2.5-1B, Sa2VA-1B's base, is Qwen2.5-0.5B), so
the comparison is about the architecture: two image encoders and a mask decoder around the LLM versus one
transformer. Preprocessing follows each system: CLIP and InternViT resize to their square input (one tile: the
InternVL dynamic tiling of up to 12 tiles would cost the peer several times more), SAM resizes the long side to 1024
and pads, SAM2 resizes to 1024 x 1024.

A follow-up question on the same image reuses everything image-side: both encoders' outputs and the LLM's key/value
cache of the image tokens (LISA and Sa2VA recompute the conversation each turn; caching is the peer's best case).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.peer_encoders import HieraImageEncoder, HieraSpec, SamImageEncoder, ViTSpec
from benchmarks.peer_pipeline import MaskDecoder, PeerConfig, ViTEncoder, mlp
from pixelsail.config import PixelSailConfig
from pixelsail.model.backbone import AttentionLayout, Backbone, KVCache
from pixelsail.model.batch_inputs import text_positions
from pixelsail.model.mask_head import MASK_THRESHOLD, mask_probabilities
from pixelsail.model.pixelsail import build_llm
from pixelsail.processing import Processor

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class PeerSizes:
    """Widths, depths and input sizes of the peers' vision parts."""

    clip: ViTSpec
    sam: ViTSpec
    intern: ViTSpec
    hiera: HieraSpec
    decoder: PeerConfig = field(default_factory=lambda: PeerConfig(vit_width=0, vit_layers=0, vit_heads=0))

    @classmethod
    def real(cls) -> "PeerSizes":
        return cls(clip=ViTSpec(width=1024, depth=24, heads=16, patch=14, image_size=224),
                   sam=ViTSpec(width=1280, depth=32, heads=16, patch=16, image_size=1024, window=14,
                               global_blocks=(7, 15, 23, 31)),
                   intern=ViTSpec(width=1024, depth=24, heads=16, patch=14, image_size=448),
                   hiera=HieraSpec())

    @classmethod
    def tiny(cls) -> "PeerSizes":
        """The same structure at a few kB of weights and 64-px inputs (for tests)."""
        return cls(clip=ViTSpec(width=32, depth=2, heads=2, patch=8, image_size=32),
                   sam=ViTSpec(width=32, depth=3, heads=2, patch=8, image_size=64, window=3, global_blocks=(1,)),
                   intern=ViTSpec(width=32, depth=2, heads=2, patch=8, image_size=64),
                   hiera=HieraSpec(embed_dim=16, heads=1, stages=(1, 1, 2, 1), windows=(4, 2, 4, 2),
                                   global_blocks=(3,), image_size=64, neck_dim=32),
                   decoder=PeerConfig(vit_width=0, vit_layers=0, vit_heads=0, prompt_dim=32, decoder_heads=2,
                                      decoder_mlp=64))

    @classmethod
    def named(cls, size: str) -> "PeerSizes":
        if size not in ("real", "tiny"):
            raise ValueError(f"peer size must be 'real' or 'tiny', got {size!r}")
        return cls.real() if size == "real" else cls.tiny()


def pixels(image: np.ndarray, size: tuple[int, int], pad_to: int | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, h, w) ImageNet-normalised, resized to ``size`` and zero-padded to ``pad_to``^2."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = (F.interpolate(x, size=size, mode="bilinear", align_corners=False) - IMAGENET_MEAN) / IMAGENET_STD
    if pad_to is not None:
        x = F.pad(x, (0, pad_to - size[1], 0, pad_to - size[0]))
    return x


def patchify(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, H, W) -> raw patches (N, 3*P*P) and the (rows, columns) grid, for :class:`ViTEncoder`."""
    grid = (x.shape[2] // patch, x.shape[3] // patch)
    p = x[:, :, :grid[0] * patch, :grid[1] * patch].unfold(2, patch, patch).unfold(3, patch, patch)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(grid[0] * grid[1], -1), grid


@dataclass
class ImageState:
    """What a peer keeps of an image for follow-up questions."""

    llm_tokens: int                  # image tokens (with their start/end markers) at the head of the LLM cache
    cache: KVCache                   # the LLM's key/value cache (cut back to the image tokens after each query)
    embedding: torch.Tensor          # (1, N, 256) segmentation-encoder embedding
    grid: tuple[int, int]            # its grid
    valid: tuple[int, int]           # rows/columns of the mask logits that cover the image (not the padding)
    size: tuple[int, int]            # the original image size


class TwoEncoderPeer(nn.Module):
    """The shared half of LISA and Sa2VA: LLM + [SEG] -> prompt MLP + SAM-style decoder; subclasses encode images."""

    def __init__(self, llm_config: PixelSailConfig, processor: Processor, sizes: PeerSizes, tower: ViTSpec):
        super().__init__()
        self.processor = processor
        self.tower_spec = tower                      # the ViT whose tokens the LLM reads
        self.vit = ViTEncoder(tower.patch, tower.width, tower.depth, tower.heads)
        self.llm = Backbone(build_llm(llm_config), llm_config.attn_implementation)
        d = sizes.decoder.prompt_dim
        self.seg_to_prompt = mlp(llm_config.hidden_size, llm_config.hidden_size, d)
        self.decoder = MaskDecoder(sizes.decoder)

    def _llm(self, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """embeds (L, C) after the ``len(cache)`` cached tokens -> final hidden states (L, C), causally."""
        past = len(cache)
        positions = text_positions(past, embeds.shape[0], embeds.device)[:, None]
        layout = AttentionLayout(torch.zeros(1, dtype=torch.long), past_len=past)
        return self.llm(embeds[None], positions, layout, cache)[0]

    def _tower(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """The image resized to the tower's square input -> its patch features (N, width) and their grid."""
        s = self.tower_spec.image_size
        patches, grid = patchify(pixels(image, (s, s)).to(self.decoder.no_mask.device), self.tower_spec.patch)
        return self.vit(patches, grid)[0], grid

    def llm_image_tokens(self, image: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def segmentation_encoding(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """-> embedding (1, N, d), its grid, and the valid rows/columns of the stride-4 mask logits."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> ImageState:
        proc = self.processor
        dev = self.llm.llm.get_input_embeddings().weight.device
        ends = self.llm.embed(torch.tensor([proc.ids["vision_start"], proc.ids["vision_end"]], device=dev))
        seq = torch.cat([ends[:1], self.llm_image_tokens(image), ends[1:]])
        cache = KVCache()
        self._llm(seq, cache)
        embedding, grid, valid = self.segmentation_encoding(image)
        return ImageState(seq.shape[0], cache, embedding, grid, valid, image.shape[:2])

    @torch.no_grad()
    def respond(self, state: ImageState, question: str, answer: str,
                history: list[tuple[str, str]] = ()) -> list[np.ndarray]:
        """The text after the image through the LLM (reading the image's cache), then one mask per [SEG]."""
        proc = self.processor
        dev = self.llm.llm.get_input_embeddings().weight.device
        ids = torch.tensor(proc.prompt_ids(question, list(history), answer_prefix=answer), device=dev)
        try:
            hidden = self._llm(self.llm.embed(ids), state.cache)
        finally:
            state.cache.truncate(state.llm_tokens)
        self.llm.logits(hidden[-1:])   # the next-token (end-of-turn) logits, as Pixel-SAIL's respond computes them
        is_seg = ids == proc.ids["seg"]
        is_seg[:len(ids) - len(proc.encode(answer))] = False       # only the answer's [SEG]s, not the history's
        seg = hidden[is_seg]
        masks = []
        for prompt in self.seg_to_prompt(seg):
            logits = self.decoder(state.embedding, state.grid, prompt[None])[:, :state.valid[0], :state.valid[1]]
            masks.append((mask_probabilities(logits, state.size)[0] > MASK_THRESHOLD).cpu().numpy())
        return masks

    def segment(self, image: np.ndarray, question: str, answer: str) -> tuple[ImageState, list[np.ndarray]]:
        """A first query: encode the image (both encoders, LLM prefix), answer, decode the masks."""
        state = self.encode_image(image)
        return state, self.respond(state, question, answer)

    def component_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        llm = count(self.llm)
        return {"llm": llm, "mask_decoder": count(self.decoder) + count(self.seg_to_prompt),
                "vision": count(self) - llm - count(self.decoder) - count(self.seg_to_prompt)}


class LisaPeer(TwoEncoderPeer):
    """CLIP ViT-L/14 for the LLM, SAM ViT-H + SAM's decoder for the masks."""

    name = "LISA"

    def __init__(self, llm_config: PixelSailConfig, processor: Processor, sizes: PeerSizes):
        super().__init__(llm_config, processor, sizes, sizes.clip)
        self.projector = mlp(sizes.clip.width, llm_config.hidden_size, llm_config.hidden_size)
        self.sam_spec = sizes.sam
        self.sam = SamImageEncoder(sizes.sam, sizes.decoder.prompt_dim)

    def llm_image_tokens(self, image: np.ndarray) -> torch.Tensor:
        return self.projector(self._tower(image)[0])

    def segmentation_encoding(self, image: np.ndarray):
        side, (h, w) = self.sam_spec.image_size, image.shape[:2]
        scale = side / max(h, w)
        resized = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = pixels(image, resized, pad_to=side).to(self.sam.pos.device)
        patch = self.sam_spec.patch
        grid = (side // patch,) * 2
        # the decoder's logits have 4x the embedding's rows/columns; those covering the image, not the padding
        valid = (-(-4 * resized[0] // patch), -(-4 * resized[1] // patch))
        return self.sam(x), grid, valid


class Sa2VAPeer(TwoEncoderPeer):
    """InternViT-300M (pixel-shuffled to 1/4 of its tokens) for the LLM, SAM2 Hiera-L + SAM2's decoder for masks."""

    name = "Sa2VA-1B"

    def __init__(self, llm_config: PixelSailConfig, processor: Processor, sizes: PeerSizes):
        super().__init__(llm_config, processor, sizes, sizes.intern)
        width = sizes.intern.width
        self.projector = nn.Sequential(nn.LayerNorm(4 * width),
                                       mlp(4 * width, llm_config.hidden_size, llm_config.hidden_size))
        self.hiera_spec = sizes.hiera
        self.hiera = HieraImageEncoder(sizes.hiera)

    def llm_image_tokens(self, image: np.ndarray) -> torch.Tensor:
        feats, (gh, gw) = self._tower(image)
        x = feats.view(gh // 2, 2, gw // 2, 2, -1).permute(0, 2, 1, 3, 4)       # pixel shuffle, ratio 0.5
        return self.projector(x.reshape(gh // 2 * (gw // 2), -1))

    def segmentation_encoding(self, image: np.ndarray):
        side = self.hiera_spec.image_size
        embedding, s0, s1 = self.hiera(pixels(image, (side, side)).to(self.hiera.pos.device))
        # SAM2's decoder adds s1 / s0 into its two upscaling steps: elementwise adds, left to the shared decoder
        del s0, s1
        grid = (side // 16,) * 2
        return embedding, grid, (4 * grid[0], 4 * grid[1])


PEERS = {"lisa": LisaPeer, "sa2va": Sa2VAPeer}

__all__ = ["ImageState", "LisaPeer", "PEERS", "PeerSizes", "Sa2VAPeer", "TwoEncoderPeer", "patchify", "pixels"]
