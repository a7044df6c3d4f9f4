"""Keep `None` alive under PySide6 builds that drop a reference to it on every void method call.

Observed with PySide6 6.12.0 on Python 3.11: each call of a method returning nothing (QPainter.drawRect,
QGraphicsItem.setPen, QLabel.setText, ...) decrements None's reference count once, so a piano roll that paints
a few thousand notes brings it to zero within seconds and Python aborts ("none_dealloc: deallocating None").
From Python 3.12 on, None is immortal and nothing is needed. On older Pythons we give None a reference count so
large (2**40) that no session can spend it; None is never deallocated anyway, so nothing else changes.
"""

from __future__ import annotations

import ctypes
import sys

NONE_RESERVE = 1 << 40


def keep_none_alive() -> None:
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return
    refcount = ctypes.c_ssize_t.from_address(id(None))  # ob_refcnt is a PyObject's first field
    if refcount.value < NONE_RESERVE:
        refcount.value += NONE_RESERVE


keep_none_alive()
