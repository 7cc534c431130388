"""The CLI answers --help and argument errors without importing torch (about a second on a laptop CPU)."""
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from fake_pixelsail import scene

# runs the CLI as `pixelsail ARGS` would, then reports on stderr whether torch got imported
PROBE = """
import sys
sys.argv = ["pixelsail", *sys.argv[1:]]
try:
    from pixelsail.cli import main
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-NOT-IMPORTED", code, file=sys.stderr)
"""


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60, env=env)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("args, code, expect", [
    (["--help"], "0", "segment"),
    (["segment", "--help"], "0", "referring expression"),
    (["segment"], "2", "Missing argument"),
    (["eval", "--task", "nonsense", "--out", "x", "--bogus"], "2", "No such option"),
    (["segment", "/no/such.png", "the red circle"], "2", "error: image file not found: /no/such.png"),
    (["describe", "/no/such.png"], "2", "error: image file not found: /no/such.png"),
    (["ask", "/no/such.png", "What is <vp_0>?", "--box", "1,2,3"], "2", "error: image file not found"),
    (["segment", "IMG", "the red circle", "--model", "/no/such/model"], "2", "no pixelsail model in /no/such/model"),
    (["segment", "IMG", "  "], "2", "error: the referring expression is empty"),
])
def test_help_and_argument_errors_do_not_import_torch(args, code, expect, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(scene()).save(image)
    proc, seconds = run_cli(*[str(image) if a == "IMG" else a for a in args])
    status = proc.stderr.strip().splitlines()[-1]
    assert status == f"TORCH-NOT-IMPORTED {code}", proc.stderr[-2000:]
    assert expect in proc.stdout + proc.stderr
    print(f"pixelsail {' '.join(args)}: {seconds:.2f} s")


def test_help_is_faster_than_importing_torch():
    """A timing check with a wide margin (the machine may be busy): --help against a bare `import torch`."""
    help_s = min(run_cli("--help")[1] for _ in range(2))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, timeout=60, env=env)
    torch_s = time.perf_counter() - t0
    print(f"pixelsail --help {help_s:.2f} s, python -c 'import torch' {torch_s:.2f} s")
    assert help_s < torch_s, (help_s, torch_s)
