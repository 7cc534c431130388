"""scripts/steps.sh: demo.sh and test.sh announce the .venv install exactly when env.sh is about to run it."""
import hashlib
import subprocess
from pathlib import Path

STEPS = Path(__file__).resolve().parents[1] / "scripts" / "steps.sh"


def needs_install(root: Path) -> bool:
    proc = subprocess.run(["bash", "-c", f'. "{STEPS}"; venv_needs_install "$1"', "_", str(root)], timeout=30)
    return proc.returncode == 0


def test_venv_install_is_announced_only_when_env_sh_will_install(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert needs_install(tmp_path)                                    # a fresh clone: no .venv
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert needs_install(tmp_path)                                    # a .venv without a finished install
    stamp = tmp_path / ".venv" / ".pixelsail-installed"
    stamp.write_text(hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest() + "\n")
    assert not needs_install(tmp_path)                                # installed for this pyproject.toml
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert needs_install(tmp_path)                                    # pyproject.toml changed since


def test_step_prints_one_line_saying_what_and_how_long():
    out = subprocess.run(["bash", "-c", f'. "{STEPS}"; step "installing things" "about 40 s"'], timeout=30,
                         capture_output=True, text=True).stdout
    assert out == "==> installing things (about 40 s)\n"
