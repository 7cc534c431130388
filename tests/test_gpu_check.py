"""scripts/gpu-check.sh in its CPU dry mode: every stage runs (tiny) and lands in the report."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_stage_and_writes_the_report(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--cpu-smoke", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=400)
    report = (tmp_path / "gpu-check.md").read_text()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    expected = {"selfcheck", "tests", "bench", "train", "eval", "finetune"}
    if (ROOT / "benchmarks" / "batch_inference.py").is_file():
        expected.add("batch")
    assert expected <= rows.keys(), report
    for name in expected:
        assert f"| {name} | ok |" in rows[name], rows[name]
    assert "6 cached answers == full forward" in rows["selfcheck"]
    assert "passed" in rows["tests"] and "samples_per_s" in rows["train"] and "cIoU" in rows["eval"]
    assert "step 3," in rows["finetune"] and "samples_per_s" in rows["finetune"]
    assert (tmp_path / "shapes" / "model").is_dir() and (tmp_path / "shapes-eval" / "results.json").is_file()
