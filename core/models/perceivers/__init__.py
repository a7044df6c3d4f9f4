"""PerceiverS (Perceiver AR with a multi-scale cascade): the model, its generation state, its lean step path.

    model.py     PerceiverSConfig, PerceiverS (training `forward` on crops, `prefill`, `step`, `read`), visible
    state.py     what a byte budget buys (PerceiverSPlan), PerceiverSState's rings, state_bytes
    step.py      the packed weights, the cached paths' helpers and the one-token step
    training.py  PerceiverSTraining: how the trainer crops pieces for it (imported by the trainer only)
"""

from core.models.perceivers.model import PerceiverS, PerceiverSConfig, visible
from core.models.perceivers.state import PerceiverSPlan, PerceiverSState, plan_state, state_bytes

__all__ = ["PerceiverS", "PerceiverSConfig", "PerceiverSPlan", "PerceiverSState", "plan_state", "state_bytes",
           "visible"]
