"""A stop request (SIGTERM from a scheduler or a user): the run in progress is interrupted as Ctrl-C does,
Dagster marks it failed, the atomic writers remove their temp files, and no later run starts. No Dagster
import here: the CLI installs the handler before it imports anything heavy."""

from __future__ import annotations

import signal
import threading

STOP = threading.Event()
"""Set once a stop was requested."""


class Stopped(Exception):
    """The pipeline ended early on a stop request; the message says where."""


def stop_on_sigterm() -> None:
    """Route SIGTERM to `request_stop` in this process (only the main thread may set a handler)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)


def request_stop(signum=None, frame=None) -> None:
    STOP.set()
    raise KeyboardInterrupt  # interrupts the run in progress the way Ctrl-C does
