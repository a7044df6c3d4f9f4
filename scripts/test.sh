#!/usr/bin/env bash
# Command (b) of the README: install what the tests need (idempotent), then run the whole suite.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$RECITAL_ROOT"

ensure_apt "${APT_RUNTIME[@]}"
ensure_venv "dev"

export QT_QPA_PLATFORM=offscreen
log "lint: ruff"
"$VENV/bin/ruff" check "$RECITAL_ROOT"
log "lint: import layers (studio > trainer > core; no Qt below the studio)"
"$VENV/bin/lint-imports" --config "$RECITAL_ROOT/pyproject.toml"
set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then log "pytest collected no tests: that is a failure"; exit 1; fi
exit "$status"
