#!/usr/bin/env bash
# The whole test suite in a fresh (or refreshed) .venv. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/steps.sh
. "$ROOT/scripts/steps.sh"
if venv_needs_install "$ROOT"; then
  step "setting up .venv: installing torch (CPU wheel), pixelsail and the test tools" \
    "about 45 s with a fast connection; once"
fi
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"
step "checking the system packages the tests use; apt installs any that are missing" \
  "a moment; about 40 s the first time"
bash "$ROOT/scripts/system-deps.sh"
cd "$ROOT"
step "running the test suite on 2 processes" "about 90 s on 2 cores"
exec python -m pytest -p no:cacheprovider -n 2 --dist loadfile "$@"
