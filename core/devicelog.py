"""Keep libjack's and ALSA's own messages off the user's terminal: Recital says what went wrong in one line.

Probing for an audio device prints a dozen lines from libjack ("Cannot connect to server socket ...") and from
ALSA ("ALSA lib confmisc.c: ... cannot find card '0'") before our one-line error, and a JACK server that stops
makes libjack print more from its own threads. Both libraries let a program replace their error printer; this
module installs do-nothing printers in every copy of them loaded into the process (python-rtmidi's wheel
bundles its own libjack beside the system's, which fluidsynth uses). It changes no file descriptor, so our own
messages, and any other thread's, still reach stderr.

RECITAL_DEVICE_LOG=1 keeps the libraries' messages, for debugging a device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

LOG_ENV = "RECITAL_DEVICE_LOG"

# void (*)(const char *msg): libjack's error and info printers.
_JACK_PRINTER = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
# void (*)(const char *file, int line, const char *function, int err, const char *fmt, ...): ALSA's; the
# variadic rest is never read, so the fixed part is all the callback declares.
_ALSA_PRINTER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p)


def _ignore(*_args) -> None:
    """Drop a library message."""


_jack_printer = _JACK_PRINTER(_ignore)  # module globals: C keeps pointers to these for the process's life
_alsa_printer = _ALSA_PRINTER(_ignore)
_lock = threading.Lock()
_silenced: set[str] = set()


def loaded_libraries(stem: str) -> list[str]:
    """Paths of the shared libraries whose file name starts with `stem` (e.g. "libjack") that this process has
    loaded; where the loader's map cannot be read (not Linux), the system's copy if there is one."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        paths = []
        for line in maps.read_text(errors="replace").splitlines():
            fields = line.split(maxsplit=5)  # address perms offset device inode [path]
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and Path(path).name.startswith(stem) and path not in paths:
                paths.append(path)
        return paths
    found = ctypes.util.find_library(stem.removeprefix("lib"))
    return [found] if found else []


def _library(path: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(path)  # already loaded: the same handle, no second copy
    except OSError:
        return None


def silence_device_libraries() -> None:
    """Install the do-nothing printers in every loaded libjack and libasound (again after new ones load)."""
    if os.environ.get(LOG_ENV, "").strip() not in ("", "0"):
        return
    with _lock:
        for path in loaded_libraries("libjack"):
            if path in _silenced or "libjackserver" in path or "libjacknet" in path:
                continue
            library = _library(path)
            if library is not None and hasattr(library, "jack_set_error_function"):
                library.jack_set_error_function(_jack_printer)
                if hasattr(library, "jack_set_info_function"):
                    library.jack_set_info_function(_jack_printer)
            _silenced.add(path)
        for path in loaded_libraries("libasound"):
            if path in _silenced:
                continue
            library = _library(path)
            if library is not None and hasattr(library, "snd_lib_error_set_handler"):
                library.snd_lib_error_set_handler(_alsa_printer)
            _silenced.add(path)
