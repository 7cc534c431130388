"""Under the lowest and the highest transformers that pyproject declares, cached generation equals a full forward and
our decoder computes what transformers' Qwen2 computes.

transformers 5.17 once broke every cached generation (it renamed the keyword its decoder layers forward the cache
under); pixelsail now computes the layers itself, and this test keeps it that way across the declared range. A
version other than the installed one goes into a small overlay environment: a venv whose site-packages also sees
this one's (through a .pth file), so pip installs only transformers and the few dependencies that must differ.
The check itself is ``python -m pixelsail.model.selfcheck`` (also run on CUDA by scripts/gpu-check.sh).
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

from pixelsail.model.selfcheck import QUESTIONS

ROOT = Path(__file__).resolve().parents[1]
TESTED = ("5.0.0", "5.24.0")  # the bounds of pyproject's transformers range, each checked below


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
    run = subprocess.run([str(python), "-m", "pixelsail.model.selfcheck"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert run.returncode == 0, f"under transformers {version}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["transformers"] == version
    assert len(report["answers"]) == 3 * len(QUESTIONS)
