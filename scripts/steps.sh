# Sourced by demo.sh and test.sh: announce each long step before it starts, so a first run is never silent.
# step WHAT HOW_LONG  -> "==> WHAT (HOW_LONG)"
step() { echo "==> $1 ($2)"; }

# True when scripts/env.sh is about to create .venv or reinstall into it (no venv yet, or pyproject.toml changed
# since the last install: the same stamp env.sh keeps).
venv_needs_install() {
  local root="$1" stamp="$1/.venv/.pixelsail-installed"
  [ ! -x "$root/.venv/bin/python" ] || [ ! -f "$stamp" ] ||
    [ "$(cat "$stamp")" != "$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)" ]
}
