"""Recital's Qt-free core: MIDI in/out, the performance codec, models, budgeted state, generation, output."""

__version__ = "0.1.0"
