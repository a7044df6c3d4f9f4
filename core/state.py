"""How many tokens make a second of music (budgets live in core/budget.py).

The plans and states themselves live with their models (core/models/<arch>/state.py).
"""

from __future__ import annotations

TOKENS_PER_SECOND = 40.0  # dense piano performance: about 40 tokens per second of music
