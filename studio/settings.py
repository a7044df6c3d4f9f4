"""The studio's settings: one small JSON file in the user's config folder, read once and written on change.

`platformdirs.user_config_dir("recital")/studio.json` (or `$RECITAL_CONFIG_DIR/studio.json`). A missing or
unreadable file gives the defaults: settings are a convenience, never a reason not to start.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import platformdirs

from core.infill import CONTEXT_SECONDS
from core.midi import atomic_write_bytes

CONFIG_ENV = "RECITAL_CONFIG_DIR"


def config_dir() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or platformdirs.user_config_dir("recital"))


@dataclass
class Settings:
    """What the studio remembers between sessions."""

    model: str = ""  # the picked model's directory ("" = the first one found)
    budget_mb: float = 0.0  # 0: not chosen, the model's default for each take (core/budget.py)
    seconds: float = 20.0
    temperature: float = 1.0
    top_p: float = 0.95
    adapt: bool = False  # the Write panel's "Adapt to the primer", when the composer set it (adapt_chosen)
    adapt_chosen: bool = False  # else each model's own default (core.adapt.adapts_by_default)
    keep_beat: bool = True  # the Write panel's "Keep the primer's beat" (core/pulse.py)
    recall_motifs: bool = True  # the Write panel's "Recall the piece" (core/contextcache.py, core/motif.py)
    variations: int = 1
    infill_context: float = CONTEXT_SECONDS or 0.0  # Regenerate selection's seconds each side; 0: as the window holds
    infill_steps: int = 0  # Regenerate selection's unmasking passes; 0: the model's own
    output: str = "synth"  # "synth", "virtual", or "port:<name>"
    midi_input: str = ""  # "" = the virtual "Recital In" port
    last_folder: str = ""  # where the last file dialog was
    soundfont: str = ""  # "" = found automatically

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or config_dir() / "studio.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        defaults = cls()
        kept = {}
        for field in fields(cls):
            value = data.get(field.name)
            if isinstance(value, type(getattr(defaults, field.name))) or (
                    isinstance(value, int) and isinstance(getattr(defaults, field.name), float)):
                kept[field.name] = value
        return cls(**kept)

    def save(self, path: Path | None = None) -> None:
        """Write the file atomically; a read-only config folder is silently skipped (settings are optional)."""
        path = path or config_dir() / "studio.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, (json.dumps(asdict(self), indent=2) + "\n").encode(), what="settings")
        except Exception:  # noqa: BLE001 - a settings file must never break the app
            pass
