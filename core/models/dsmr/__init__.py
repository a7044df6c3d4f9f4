"""DSMR (Depth-Structured Music Recurrence): the model, its budgeted recurrent state, its lean step path.

    model.py     DSMRConfig, DSMR (training `forward`, `prefill`, `step`, `read`), segment_loss
    state.py     the planner (a byte budget -> per-layer horizons), StatePlan, RecurrentState
    step.py      the packed weights and the one-id-per-lane step
    training.py  DSMRTraining: how the trainer streams pieces through it (imported by the trainer only)
"""

from core.models.dsmr.model import DSMR, DSMRConfig, segment_loss
from core.models.dsmr.state import RecurrentState, StatePlan, minimum_budget, plan_horizons

__all__ = ["DSMR", "DSMRConfig", "RecurrentState", "StatePlan", "minimum_budget", "plan_horizons", "segment_loss"]
