# Shared by setup.sh and test.sh: the apt packages and the .venv, each installed only when missing.
# Sourced, not run. Every step checks first, so a second run does nothing but the checks.

RECITAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$RECITAL_ROOT/.venv"

# What the app needs from Debian: the synth and a General MIDI SoundFont, a JACK server for virtual MIDI
# where there is no ALSA sequencer, and the X11/EGL libraries Qt's xcb platform loads.
APT_RUNTIME=(fluidsynth libfluidsynth3 timgm6mb-soundfont jackd2
             libegl1 libgl1 libfontconfig1 libxkbcommon0 libxkbcommon-x11-0 libdbus-1-3 libglib2.0-0
             libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
             libxcb-shape0 libxcb-xinerama0 libxcb-randr0 libxcb-xkb1)

log() { printf '\033[1m[recital]\033[0m %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; return 1; fi
}

ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then log "apt packages: all present"; return 0; fi
    log "apt packages: installing ${missing[*]}"
    as_root apt-get -o DPkg::Lock::Timeout=300 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$candidate"; return 0
        fi
    done
    log "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"; return 1
}

# ensure_venv EXTRAS: .venv with torch (the CPU build 2.13.0 unless a torch is already there) and
# the project installed editable with the given extras; skipped when pyproject.toml has not changed.
ensure_venv() {
    local extras="$1" python stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        python="$(pick_python)"
        if ! "$python" -c 'import ensurepip' 2>/dev/null; then ensure_apt python3-venv; fi
        log "creating $VENV"
        "$python" -m venv "$VENV"
    fi
    # The stamp records pyproject.toml's hash and the extras installed with it; no extras are
    # satisfied by any install of the same pyproject.toml.
    stamp="$VENV/.recital-installed"
    hash="$(sha256sum "$RECITAL_ROOT/pyproject.toml" | cut -c1-16)"
    if [ -f "$stamp" ] && { grep -qxF "$hash [$extras]" "$stamp" || { [ -z "$extras" ] && grep -q "^$hash " "$stamp"; }; }; then
        log "python packages: all present"; return 0
    fi
    if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
        log "installing torch 2.13.0 (for an NVIDIA GPU's CUDA build see \"With an NVIDIA GPU\" in README.md)"
        "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
    fi
    log "installing recital${extras:+[$extras]}"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$RECITAL_ROOT${extras:+[$extras]}"
    echo "$hash [$extras]" > "$stamp"
}
