#!/usr/bin/env bash
# Command (a) of the README: set everything up on Debian, then make music with the shipped default model.
# A second run checks, skips what is installed and writes new pieces beside the old ones: nothing in out/ is
# replaced (the first run writes new-piece.mid, the next new-piece-2.mid, and so on).
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$RECITAL_ROOT"

ensure_apt "${APT_RUNTIME[@]}"
ensure_venv ""

if [ ! -d assets/models/default ]; then
    log "assets/models/default is missing (it ships with Recital): restore it with git checkout -- assets/models"
    log "Everything else is installed: try '.venv/bin/recital --help'."
    exit 0
fi

# The first free run number: every file of a run gets the same suffix ("" for the first run, then -2, -3 ...).
run=1 suffix=""
while [ -e "out/new-piece$suffix.mid" ] || [ -e "out/new-piece$suffix.wav" ] \
      || [ -e "out/continued$suffix.mid" ] || [ -e "out/continued$suffix.wav" ]; do
    run=$((run + 1)) suffix="-$run"
done
mkdir -p out
[ "$run" = 1 ] || log "out/ holds earlier runs' pieces, kept: this run writes new-piece$suffix.mid and so on"

log "generating a new piece with the default model"
.venv/bin/recital generate --seconds 30 --out "out/new-piece$suffix.mid" --wav "out/new-piece$suffix.wav"
# The primer as installed package data (recital_assets), where the installed Recital finds its shipped files.
primer="$(.venv/bin/python -c 'from importlib import resources
print(resources.files("recital_assets") / "primers" / "primer.mid")')"
log "continuing the bundled primer ($primer)"
.venv/bin/recital continue "$primer" --seconds 30 --out "out/continued$suffix.mid" --wav "out/continued$suffix.wav"

if [ ! -e /dev/snd/seq ] && ! pgrep -x jackd >/dev/null; then
    log "virtual MIDI (recital play --virtual, the studio's Recital port) needs the ALSA sequencer or JACK:"
    log "  sudo modprobe snd-seq, or start JACK (not started for you): jackd --no-realtime -d dummy -r 44100 -p 256 &"
fi
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    log "opening Recital Studio"
    .venv/bin/recital-studio "out/new-piece$suffix.mid"
else
    log "no display: skipping Recital Studio (your pieces are in out/: new-piece$suffix.mid/.wav, continued$suffix.mid/.wav)"
fi
