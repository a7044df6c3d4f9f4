#!/usr/bin/env bash
# Command (a) of the README: set everything up on Debian, then make music with the shipped default model.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$RECITAL_ROOT"

ensure_apt "${APT_RUNTIME[@]}"
ensure_venv ""

mkdir -p out
if [ ! -d assets/models/default ]; then
    log "assets/models/default is missing (it ships with Recital): restore it with git checkout -- assets/models"
    log "Everything else is installed: try '.venv/bin/recital --help'."
    exit 0
fi
log "generating a new piece with the default model"
.venv/bin/recital generate --seconds 30 --out out/new-piece.mid --wav out/new-piece.wav
if [ -f assets/primers/primer.mid ]; then
    log "continuing the bundled primer"
    .venv/bin/recital continue assets/primers/primer.mid --seconds 30 --out out/continued.mid --wav out/continued.wav
fi
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    log "opening Recital Studio"
    .venv/bin/recital-studio out/new-piece.mid
else
    log "no display: skipping Recital Studio (your pieces are in out/)"
fi
