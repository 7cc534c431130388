#!/usr/bin/env bash
# The main job on the embedded default: the shipped shapes-tiny model segments, answers and describes shapes scenes.
# Usage: bash scripts/demo.sh [output dir]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"
cd "$ROOT"
exec pixelsail demo --out "${1:-outputs/demo}"
