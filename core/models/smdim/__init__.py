"""SMDIM (discrete diffusion with Mamba-FeedForward-Attention blocks): the model, its plan, its sampler, its scan.

    model.py     SMDIMConfig, SMDIM (`forward` scores a window, `predict`, `denoise`), the MFA blocks
    scan.py      the selective scan: chunked parallel (training) and recurrent forms; mamba-ssm's CUDA kernel
    state.py     what a byte budget buys (SMDIMPlan: the window of one pass), SMDIMState
    sampling.py  iterative unmasking (cosine schedule, confidence or random order, a constrain hook)
    training.py  SMDIMTraining: masked windows, the 1/t-weighted ELBO (imported by the trainer only)
"""

from core.models.smdim.model import SMDIM, SMDIMConfig
from core.models.smdim.state import SMDIMPlan, SMDIMState, plan_window

__all__ = ["SMDIM", "SMDIMConfig", "SMDIMPlan", "SMDIMState", "plan_window"]
