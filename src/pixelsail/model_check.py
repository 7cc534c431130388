"""Check a saved model directory's files before anything heavy reads them.

``PixelSail.from_pretrained`` builds the whole network before it opens the weights, and the safetensors reader
reports a damaged file as a bare ``SafetensorError`` deep in a traceback. These checks read only the config and
the weights file's header (no torch, a few kilobytes), so a damaged checkpoint is refused at once with one line
that names the file and what is wrong with it.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

# the names PixelSail.save_pretrained writes (pixelsail.model.pixelsail.CONFIG_FILE / WEIGHTS_FILE)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_SECTIONS = ("pixelsail", "llm")
MAX_HEADER_BYTES = 100_000_000  # the safetensors reader's own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class ModelFileError(ValueError):
    """A model directory whose files cannot be loaded; the message names the file and the problem."""


class ModelFileWarning(UserWarning):
    """Something in a model directory that loading ignores (e.g. an unknown config field)."""


def check_config(path: Path) -> list[str]:
    """Refuse a config.json that is not a pixelsail config; return warnings (unknown top-level fields)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    missing = [k for k in CONFIG_SECTIONS if not isinstance(meta.get(k), dict)]
    if missing:
        raise ModelFileError(f"{path}: not a pixelsail config (no {' or '.join(repr(k) for k in missing)} section)")
    unknown = sorted(set(meta) - set(CONFIG_SECTIONS))
    if unknown:
        return [f"{path}: unknown top-level field(s) {', '.join(repr(k) for k in unknown)} ignored "
                f"(a pixelsail config has only {' and '.join(CONFIG_SECTIONS)})"]
    return []


def check_safetensors(path: Path) -> None:
    """Validate a safetensors file's header and tensor table against the file's size, without reading tensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: corrupt weights file: {size} bytes, too short for a safetensors "
                                     "header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise ModelFileError(f"{path}: corrupt weights file: the header length field says {n:,} bytes, "
                                     f"but the file has {size - 8:,} bytes after it")
            raw = f.read(n)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: corrupt weights file: the {n:,}-byte header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt weights file: the header is not a JSON object")
    _check_tensor_table(path, header, size - 8 - n)


def _check_tensor_table(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: corrupt weights file: tensor {name!r}"
        if not isinstance(info, dict):
            raise ModelFileError(f"{where} has no dtype/shape/data_offsets entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise ModelFileError(f"{where} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ModelFileError(f"{where} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise ModelFileError(f"{where} has data offsets {offsets!r} outside the {data_bytes:,} data bytes "
                                 "(truncated file?)")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ModelFileError(f"{where}: {dtype} {shape} needs {math.prod(shape) * DTYPE_BYTES[dtype]:,} bytes, "
                                 f"its offsets span {offsets[1] - offsets[0]:,}")
        spans.append((offsets[0], offsets[1]))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise ModelFileError(f"{path}: corrupt weights file: the tensors' data overlap or leave a gap at byte "
                                 f"{min(begin, end):,}")
        end = stop
    if end != data_bytes:
        raise ModelFileError(f"{path}: corrupt weights file: the tensors cover {end:,} of {data_bytes:,} data bytes")


def check_model_dir(directory: Path) -> list[str]:
    """Check ``config.json`` and ``model.safetensors`` of a pixelsail model directory; return warnings.

    Raises :class:`ModelFileError` for anything that would make loading fail (missing, unreadable or corrupt files).
    """
    config, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config.is_file():
        raise ModelFileError(f"no pixelsail model in {directory}: {CONFIG_NAME} not found")
    warnings = check_config(config)
    if not weights.is_file():
        raise ModelFileError(f"{weights} is missing")
    check_safetensors(weights)
    return warnings
