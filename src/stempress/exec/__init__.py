"""Where work runs: inline, threads, processes and Dask (`exec.dask`, imported when asked for), behind one interface.

Sinks and codecs never start their own pools; the engine hands them the executor of the run.
"""

from stempress.exec.base import Executor, in_flight_for
from stempress.exec.local import InlineExecutor, ThreadExecutor
from stempress.exec.select import EXECUTORS, make_executor

__all__ = ["EXECUTORS", "Executor", "InlineExecutor", "ThreadExecutor", "in_flight_for", "make_executor"]
