#!/usr/bin/env bash
# The main job on the embedded default: the shipped shapes-tiny model segments, answers and describes shapes scenes.
# Usage: bash scripts/demo.sh [output dir]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/steps.sh
. "$ROOT/scripts/steps.sh"
if venv_needs_install "$ROOT"; then
  step "setting up .venv: installing torch (CPU wheel) and pixelsail" "about 45 s with a fast connection; once"
fi
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"
cd "$ROOT"
step "loading the shipped model and running 15 requests on 3 shapes scenes" \
  "about 15 s on an idle 2-core CPU, more on a busy one"
exec pixelsail demo --out "${1:-outputs/demo}"
