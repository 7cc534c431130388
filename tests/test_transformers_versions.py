"""Under the lowest and the highest transformers that pyproject declares, cached generation equals a full forward and
our decoder computes what transformers' Qwen2 computes.

transformers 5.17 once broke every cached generation (it renamed the keyword its decoder layers forward the cache
under); pixelsail now computes the layers itself, and this test keeps it that way across the declared range. A
version other than the installed one goes into a small overlay environment: a venv whose site-packages also sees
this one's (through a .pth file), so pip installs only transformers and the few dependencies that must differ.
Run as a script (``python tests/test_transformers_versions.py VERSION``), this file performs the check under the
transformers it imports.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTED = ("5.0.0", "5.24.0")  # the bounds of pyproject's transformers range, each checked below
QUESTIONS = ("Please segment the red square.", "What colour is the square?")


def declared_bounds() -> tuple[str, str]:
    """(lower, upper) of pyproject's ``transformers>=LOWER,<UPPER`` requirement."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"transformers>=([\d.]+),<([\d.]+)"', text)
    assert match, "pyproject.toml must declare transformers as >=LOWEST,<NEXT_UNTESTED"
    return match.group(1), match.group(2)


def test_tested_versions_are_the_bounds_of_the_declared_range():
    from packaging.version import Version

    lower, upper = declared_bounds()
    low, high = Version(TESTED[0]), Version(TESTED[1])
    assert low == Version(lower)
    assert high < Version(upper) and high.release[:2] == (Version(upper).major, Version(upper).minor - 1), (
        f"the highest tested version {high} must be the last minor release below the declared bound {upper}")


def check_installed_transformers(expected: str) -> dict:
    """The check itself, under whichever transformers this interpreter imports (must be ``expected``)."""
    import numpy as np
    import torch
    import transformers

    from pixelsail.model import PixelSail
    from pixelsail.model.backbone import ATTENTION_IMPLEMENTATIONS
    from pixelsail.predictor import shipped_model_dir

    assert transformers.__version__ == expected, f"imported transformers {transformers.__version__}, not {expected}"
    image = np.full((128, 128, 3), 255, np.uint8)
    image[30:80, 40:100] = (220, 30, 30)
    answers = {}
    for attn in ATTENTION_IMPLEMENTATIONS:
        model = PixelSail.from_pretrained(shipped_model_dir(), attn_implementation=attn)
        prefix = model.prefill_image(image)
        for question in QUESTIONS:
            cached = model.respond(prefix, question, max_new_tokens=12)
            full = model.respond(prefix, question, max_new_tokens=12, use_cache=False)
            assert cached.token_ids == full.token_ids, f"{attn}: cached {cached.text!r} != full forward {full.text!r}"
            assert len(cached.masks) == len(full.masks)
            assert all((a == b).mean() > 0.999 for a, b in zip(cached.masks, full.masks))
            answers[f"{attn}: {question}"] = cached.text
        ids = torch.tensor([model.processor.encode(" ".join(QUESTIONS))])
        with torch.no_grad():
            theirs = model.backbone.llm(input_ids=ids).logits
        ours = model.text_logits(ids)
        assert torch.allclose(ours, theirs, atol=1e-4), f"{attn}: max |diff| {(ours - theirs).abs().max():.2e}"
    return answers


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _overlay_python(version: str, root: Path) -> Path:
    """A venv with transformers==version on top of this environment's packages; skips only without a network."""
    env = root / f"transformers-{version}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    child_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
    parent_site = sysconfig.get_paths()["purelib"]
    # addsitedir (not a bare path) so the parent's own .pth files - the editable pixelsail install - are read too;
    # it appends, so the overlay's packages come first
    (Path(child_site) / "_parent_site.pth").write_text(f"import site; site.addsitedir({parent_site!r})\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                              "--disable-pip-version-check", f"transformers=={version}"],
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        if not _pypi_reachable():
            pytest.skip(f"cannot install transformers=={version}: no network (pypi.org unreachable)")
        pytest.fail(f"pip could not install transformers=={version}:\n{install.stderr[-3000:]}")
    return python


@pytest.mark.slow
@pytest.mark.parametrize("version", TESTED)
def test_cached_generation_equals_full_forward_under_transformers(version, tmp_path):
    import transformers

    python = Path(sys.executable) if transformers.__version__ == version else _overlay_python(version, tmp_path)
    run = subprocess.run([str(python), str(Path(__file__)), version], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert run.returncode == 0, f"under transformers {version}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    answers = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(answers) == 3 * len(QUESTIONS)


if __name__ == "__main__":
    print(json.dumps(check_installed_transformers(sys.argv[1])))
