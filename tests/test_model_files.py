"""A damaged model directory is refused with one line naming the file and the problem (API: InputError, CLI: exit 2);
an unknown top-level config field is loaded but warned about."""
import json
import shutil
import struct
import warnings

import pytest
from PIL import Image
from typer.testing import CliRunner

from fake_pixelsail import scene
from pixelsail.cli import app
from pixelsail.model_check import ModelFileWarning, check_model_dir
from pixelsail.predictor import InputError, Predictor, shipped_model_dir

SHIPPED = shipped_model_dir()
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="the shipped model is absent")
runner = CliRunner()


def header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def corrupt_huge_length(data: bytes) -> bytes:
    return struct.pack("<Q", 2**63) + data[8:]


def corrupt_header_bytes(data: bytes) -> bytes:
    n = header_length(data)
    return data[:8] + b"\xff\x00garbage" + data[17:8 + n] + data[8 + n:]


def corrupt_offsets(data: bytes) -> bytes:  # valid JSON, but a tensor's offsets point past the end of the file
    n = header_length(data)
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


CORRUPTIONS = [
    (corrupt_huge_length, "the header length field says 9,223,372,036,854,775,808 bytes"),
    (corrupt_header_bytes, "header is not valid JSON"),
    (corrupt_offsets, "outside the"),
    (truncated, "outside the"),
    (lambda data: data[:5], "too short for a safetensors header"),
]


def model_copy(tmp_path, weights: bytes | None = None, config: dict | None = None):
    d = tmp_path / "model"
    shutil.copytree(SHIPPED, d)
    if weights is not None:
        (d / "model.safetensors").write_bytes(weights)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize("corrupt, problem", CORRUPTIONS, ids=[c[1][:30] for c in CORRUPTIONS])
def test_corrupt_weights_are_one_line_input_error_and_cli_exit_2(tmp_path, corrupt, problem):
    d = model_copy(tmp_path, corrupt((SHIPPED / "model.safetensors").read_bytes()))
    with pytest.raises(InputError) as ei:
        Predictor(d)
    message = str(ei.value)
    assert str(d / "model.safetensors") in message and problem in message and "\n" not in message
    image = tmp_path / "scene.png"
    Image.fromarray(scene()).save(image)
    res = runner.invoke(app, ["segment", str(image), "the red square", "--model", str(d)])
    assert res.exit_code == 2
    assert res.output.splitlines() == [f"error: {message}"]


def test_a_config_that_is_not_json_is_one_line(tmp_path):
    d = model_copy(tmp_path)
    (d / "config.json").write_text('{"pixelsail": ')
    with pytest.raises(InputError, match=r"config\.json: not valid JSON"):
        Predictor(d)


def test_the_shipped_model_passes_the_check_without_warnings():
    assert check_model_dir(SHIPPED) == []


def test_unknown_top_level_config_fields_are_warned_about_once(tmp_path):
    config = json.loads((SHIPPED / "config.json").read_text())
    d = model_copy(tmp_path, config={**config, "pixelsial": {"upsample": False}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Predictor(d)
    ours = [str(w.message) for w in caught if issubclass(w.category, ModelFileWarning)]
    assert ours == [f"{d / 'config.json'}: unknown top-level field(s) 'pixelsial' ignored "
                    "(a pixelsail config has only pixelsail and llm)"]
    image = tmp_path / "scene.png"
    Image.fromarray(scene()).save(image)
    res = runner.invoke(app, ["segment", str(image), "the red square", "--model", str(d)])
    assert res.exit_code == 0, res.output
    assert [ln for ln in res.stderr.splitlines() if "pixelsial" in ln] == [f"warning: {ours[0]}"]


def test_eval_with_a_corrupt_checkpoint_is_one_line_and_exit_2(tmp_path):
    d = model_copy(tmp_path, truncated((SHIPPED / "model.safetensors").read_bytes()))
    res = runner.invoke(app, ["eval", "--model", str(d), "--task", "shapes", "--limit", "2", "--out",
                              str(tmp_path / "ev")])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(d / "model.safetensors") in lines[0]
