"""RefCOCOg region-caption evaluation data (GLaMM style) -> ``region_caption`` samples with the region as ``<vp_0>``.

The file is COCO-like JSON: ``images`` [{id, file_name, height, width}] and ``annotations`` [{id, image_id,
caption, segmentation (polygons or RLE) or bbox [x, y, w, h]}]. One sample per distinct region of an image;
annotations of the same image with the same region pool their captions as that sample's references (COCOEvalCap
scores each id against all of its ground-truth captions).
"""
from __future__ import annotations

import json
from pathlib import Path

from pixelsail.data.annotations import decode_segmentation, read_json
from pixelsail.data.region import describe_question
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.imageio import load_image
from pixelsail.prompts import box_to_mask
from pixelsail.tokens import vp_token


class RegionCaptionDataset:
    def __init__(self, path: str | Path, image_dir: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"region-caption file not found: {self.path}")
        data = read_json(self.path, "region-caption file")
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"{self.path}: expected a COCO-style object with 'images' and 'annotations'")
        self.images = {int(im["id"]): im for im in data["images"]}
        annotations = data["annotations"]
        for i, a in enumerate(annotations):
            where = f"{self.path} annotation #{i}"
            if "caption" not in a or "image_id" not in a:
                raise ValueError(f"{where}: needs 'caption' and 'image_id'")
            if int(a["image_id"]) not in self.images:
                raise ValueError(f"{where}: image_id {a['image_id']} is not in 'images'")
            if not a.get("segmentation") and not a.get("bbox"):
                raise ValueError(f"{where}: needs a 'segmentation' or a 'bbox'")
        regions: dict[tuple[int, str], int] = {}
        self.annotations: list[dict] = []
        self.references: list[list[str]] = []
        for a in annotations:
            key = (int(a["image_id"]), json.dumps(a.get("segmentation") or a.get("bbox"), sort_keys=True))
            if key not in regions:
                regions[key] = len(self.annotations)
                self.annotations.append(a)
                self.references.append([])
            self.references[regions[key]].append(str(a["caption"]))
        self.image_dir = Path(image_dir) if image_dir is not None else self.path.parent / "images"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir} (pass image_dir)")

    def __len__(self) -> int:
        return len(self.annotations)

    def image_key(self, i: int) -> str:
        return str(self.annotations[i]["image_id"])

    def __getitem__(self, i: int) -> Sample:
        a = self.annotations[i]
        im = self.images[int(a["image_id"])]
        path = self.image_dir / im["file_name"]
        if not path.exists():
            raise FileNotFoundError(f"{self.path} annotation #{i}: image {path} not found")
        image = load_image(path)
        h, w = image.shape[:2]
        where = f"{self.path} annotation #{i}"
        if a.get("segmentation"):
            region = decode_segmentation(a["segmentation"], h, w, where)
        else:
            x, y, bw, bh = (float(v) for v in a["bbox"])
            try:
                region = box_to_mask((x, y, x + bw, y + bh), h, w)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if not region.any():
            raise ValueError(f"{where}: the region is empty")
        refs = self.references[i]
        return Sample(image=image, turns=[(describe_question(0), f"{vp_token(0)}: {refs[0]}")],
                      prompts={0: region}, task="region_caption", image_id=str(im["id"]),
                      meta={"annotation_id": a.get("id", i), "references": list(refs), "source": self.path.name})


@register_dataset("region_caption")
def region_caption(path: str, image_dir: str | None = None) -> RegionCaptionDataset:
    return RegionCaptionDataset(path, image_dir)
