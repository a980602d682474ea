"""Polite stops: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) during :func:`~neuralsvd.fit`
finish the current step, save a checkpoint and raise :class:`TrainingInterrupted`.

The handlers are installed only while ``fit`` trains with a checkpoint folder, only in the main thread
and not for a signal the process ignores, and the previous handlers are restored afterwards. A second signal while the run is finishing its step
or saving aborts at once (the previous checkpoint stays intact: writes are atomic).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopRequests", "TrainingInterrupted", "exit_code"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: ``128 + signal`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal. ``signal``: its number; ``checkpoint_path``: the checkpoint to
    resume from (None if none was written); ``step``: the step it holds; ``saved``: whether the run saved
    its state at the stop (False when a second signal aborted the save). A ``KeyboardInterrupt``, so code
    that catches ``Exception`` does not swallow it."""

    def __init__(self, signum: int, checkpoint_path: Path | None = None, step: int | None = None,
                 saved: bool = False):
        self.signal, self.checkpoint_path, self.step, self.saved = int(signum), checkpoint_path, step, saved
        name = signal.Signals(self.signal).name
        if saved:
            text = f"interrupted by {name}: checkpoint at step {step} saved to {checkpoint_path}"
        elif checkpoint_path is not None:
            text = f"aborted by a second {name}; the last checkpoint (step {step}) at {checkpoint_path} is intact"
        else:
            text = f"aborted by {name} before any checkpoint was written"
        super().__init__(text)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signal)

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.signal, self.checkpoint_path, self.step, self.saved)


class StopRequests:
    """While active (a context manager), SIGINT and SIGTERM set :attr:`signal` instead of interrupting;
    the loop polls it between steps. A second signal raises :class:`TrainingInterrupted` at once. Does
    nothing outside the main thread or when ``enabled`` is False."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:  # the second one: stop now
            self._restore()
            raise TrainingInterrupted(signum)
        self.signal = signum

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> StopRequests:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # a signal the caller ignores stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
