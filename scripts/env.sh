# Creates or refreshes .venv with everything pixelsail needs; sourced by the other scripts.
# Idempotent: re-installs only when pyproject.toml changed since the last successful install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.pixelsail-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  python -m pip install -q --upgrade pip
  # the CPU wheel first, so that the package's torch range is already satisfied and no CUDA build is pulled
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$ROOT[dev]"
  echo "$WANT" > "$STAMP"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
