"""How many tokens make a second of music, and the budget syntax's old home (now core/budget.py).

The plans and states themselves live with their models (core/models/<arch>/state.py).
"""

from __future__ import annotations

from core.budget import format_bytes, parse_budget

__all__ = ["TOKENS_PER_SECOND", "format_bytes", "parse_budget"]

TOKENS_PER_SECOND = 40.0  # dense piano performance: about 40 tokens per second of music
