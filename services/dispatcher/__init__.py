"""The dispatcher process: job expansion, job completion, lost-worker detection."""

from jobstream.services.dispatcher._dispatcher import Dispatcher
from jobstream.services.dispatcher._state import DispatcherState, OpenJob

__all__ = ["Dispatcher", "DispatcherState", "OpenJob"]
