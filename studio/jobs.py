"""Long work off the GUI thread: a `Job` runs in its own QThread and reports only through signals.

Every job has a pure part (its constructor / `prepare`, testable without threads) and `work()`, which runs in
the thread and may call `self.check()` between steps so `cancel()` (any thread) takes effect at the next one.
A RecitalError becomes `failed(message)` with core's one-line text; anything else becomes `failed` too, with
its type, so a bug shows a dialog instead of killing the app.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QDeadlineTimer, QObject, Qt, QThread, Signal, Slot

from core.errors import RecitalError
from core.threads import use_threads


class Cancelled(Exception):
    """Raised inside a job's work when its cancel flag is seen."""


class Job(QObject):
    progress = Signal(object)  # job-specific payload
    succeeded = Signal(object)  # the result of work()
    failed = Signal(str)  # a one-line message for the error dialog
    cancelled = Signal()
    finished = Signal()  # always last, whatever happened

    def __init__(self):
        super().__init__()
        self._stop = threading.Event()
        self.thread: QThread | None = None

    def cancel(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def abandon(self) -> None:
        """Cancel was not enough and the app is closing: end the work however possible (default: nothing)."""

    def check(self) -> None:
        if self._stop.is_set():
            raise Cancelled

    def work(self):
        raise NotImplementedError

    @Slot()
    def run(self) -> None:
        try:
            with use_threads("generate"):  # this thread only, for the job's duration (core/threads.py)
                result = self.work()
        except Cancelled:
            self.cancelled.emit()
        except RecitalError as error:
            self.failed.emit(str(error))
        except Exception as error:  # noqa: BLE001 - shown to the user, never swallowed silently
            self.failed.emit(f"unexpected {type(error).__name__}: {error}")
        else:
            self.succeeded.emit(result)
        finally:
            self.finished.emit()

    def start(self) -> Job:
        """Run `work()` in a new QThread; the thread quits and is released when the job finishes."""
        thread = QThread()
        thread.setObjectName(type(self).__name__)
        self.moveToThread(thread)
        thread.started.connect(self.run)
        self.finished.connect(thread.quit, Qt.DirectConnection)  # quit is thread-safe; no GUI round trip
        self.thread = thread
        thread.start()
        return self

    def wait(self, ms: int | None = 5000) -> bool:
        """Block until the thread has ended, at most `ms` (None: for as long as it takes); shutdown only."""
        if self.thread is None:
            return True
        return self.thread.wait(QDeadlineTimer(QDeadlineTimer.Forever) if ms is None else ms)


class LoadModel(Job):
    """Load a model directory (weights included) so the budget slider can plan with it."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def work(self):
        from core.generate import use_fast_step
        from core.modeldir import load_model

        model = load_model(self.path)
        use_fast_step(model)
        return model


class RenderWav(Job):
    """Render the piece to a WAV file with the built-in synth."""

    def __init__(self, perf, path: str, soundfont: str | None = None):
        super().__init__()
        self.perf, self.path, self.soundfont = perf, path, soundfont or None

    def work(self):
        from core.synth import render_wav

        return render_wav(self.perf, self.path, soundfont=self.soundfont)


class JobKeeper(QObject):
    """Holds each running job until its thread has ended: a QThread must outlive its run."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.jobs: set[Job] = set()

    def start(self, job: Job) -> Job:
        self.jobs.add(job)
        job.start()
        job.thread.finished.connect(self._reap)  # queued to this (GUI) thread
        return job

    @Slot()
    def _reap(self) -> None:
        for job in [j for j in self.jobs if j.thread is not None and j.thread.isFinished()]:
            job.thread.wait()
            self.jobs.discard(job)

    def shutdown(self, ms: int = 3000) -> None:
        """Cancel every job and wait for its thread (closing the app).

        A job that does not stop in `ms` is abandoned (a training process is terminated; its last checkpoint
        stays), then waited for without limit: destroying a running QThread would abort the app, and the
        only work that cannot be interrupted is reading a long primer, which ends by itself.
        """
        for job in list(self.jobs):
            job.cancel()
        for job in list(self.jobs):
            if not job.wait(ms):
                job.abandon()
                job.wait(None)
            self.jobs.discard(job)
