"""The training run's own process: `fine_tune` runs here, away from the studio's interpreter.

Why a process and not a thread: a run's first minutes import large libraries (torch.distributed, scipy,
sympy); loading an extension module holds Python's GIL for hundreds of milliseconds, which would freeze the
window. Across processes nothing is shared: events and the result travel as plain dicts through a queue (so
the studio never imports the trainer to read them), and the stop request is a multiprocessing Event.
No Qt here: this module is imported by the spawned process.
"""

from __future__ import annotations

from dataclasses import asdict


def train_main(config: dict, events, stop) -> None:
    """Entry point of the training process: put ("progress", dict), then ("done", dict) or ("failed", str)."""
    from core.errors import RecitalError

    try:
        from trainer.config import TrainConfig
        from trainer.loop import fine_tune

        result = fine_tune(TrainConfig.from_dict(config), on_progress=lambda event: events.put(
            ("progress", asdict(event))), should_stop=stop.is_set)
    except RecitalError as error:
        events.put(("failed", str(error)))
    except BaseException as error:  # noqa: BLE001 - reported to the studio, which shows it
        events.put(("failed", f"unexpected {type(error).__name__}: {error}"))
    else:
        events.put(("done", asdict(result)))
