#!/usr/bin/env bash
# The whole test suite in a fresh (or refreshed) .venv. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"
bash "$ROOT/scripts/system-deps.sh"
cd "$ROOT"
exec python -m pytest -p no:cacheprovider -n 2 --dist loadfile "$@"
