"""Dask (``dask.distributed``) as an executor: the same sinks and partitions as on one machine, on a cluster.

Why an executor and not a second pipeline: the engine already cuts mergeable work into partitions that travel as
``SourceSpec`` s (path, dataset, scan shape) and merges their parts in row order, and the archive writer already
spreads chunk encoding over ``info.executor``. Dask only has to run those picklable tasks; results stay
bit-identical for any number of workers because the merge order is fixed by the engine, not by Dask.

Where: ``tcp://host:8786`` (a running scheduler), ``local[:N]`` (an embedded ``LocalCluster`` of N worker
processes with one thread each, started on first use and closed by ``close``) or a ``distributed.Client`` the
caller owns (never closed here). Every worker limits its BLAS and Blosc threads to one (a worker plugin), since
parallelism comes from the workers: a BLAS pool per worker on a shared node oversubscribes it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from stempress.cores import resolve_workers
from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.exec.processes import keep_heap

if TYPE_CHECKING:
    from concurrent.futures import Future

    from distributed import Client

T = TypeVar("T")
R = TypeVar("R")

#: What ``--dask`` accepts besides a scheduler address.
LOCAL = "local"
#: Name of the worker plugin that limits threads (registered once per cluster; workers that join later get it).
PLUGIN_NAME = "stempress-thread-limits"
#: How often a wait for a task's result looks whether the scheduler still has workers.
WAIT_POLL_SECONDS = 1.0


def parse_dask(where: str) -> tuple[str, int | None]:
    """``("local", N or None)`` for ``local[:N]``, else ``("address", None)`` for a scheduler address; bad text
    is refused in one line."""
    text = where.strip()
    if text == LOCAL or text.startswith(LOCAL + ":"):
        count = text[len(LOCAL) + 1:]
        if not count:
            return LOCAL, None
        if not count.isdigit() or int(count) < 1:
            raise StempressError(f"--dask {where!r}: the local worker count must be a whole number >= 1, "
                                 "e.g. local:4")
        return LOCAL, int(count)
    if "://" not in text and ":" not in text:
        raise StempressError(f"--dask {where!r} is neither local[:N] nor a scheduler address; give e.g. "
                             "tcp://host:8786 or local:4")
    return "address", None


def limit_worker_threads() -> None:
    """One BLAS/OpenMP thread and one Blosc thread in this process: the worker count is the parallelism. Freed
    blocks stay on the heap (``keep_heap``), as in our own worker processes."""
    keep_heap()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)  # applies process-wide from now on (not used as a context)
    with contextlib.suppress(ImportError):
        from numcodecs import blosc

        blosc.set_nthreads(1)
    with contextlib.suppress(ImportError):
        import blosc2

        blosc2.set_nthreads(1)


def _worker_plugin() -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class ThreadLimits(WorkerPlugin):
        """Runs ``limit_worker_threads`` on every worker, including those that join or restart later."""

        name = PLUGIN_NAME

        def setup(self, worker: Any) -> None:
            limit_worker_threads()

    return ThreadLimits()


class DaskExecutor(Executor):
    """Runs tasks on a Dask cluster; functions and arguments must pickle (``remote``).

    ``where``: a scheduler address, ``local[:N]`` or a ``distributed.Client``; None is ``local`` with ``workers``
    processes (default every usable core). ``submit`` returns Dask's future, which has the ``result`` and
    ``cancel`` of ``concurrent.futures.Future`` that ``map_ordered`` uses.
    """

    name = "dask"
    remote = True
    #: A scheduler without workers this long ends the run (workers that restart within it are waited for).
    no_workers_seconds = 60.0

    def __init__(self, where: str | Client | None = None, workers: int | None = None) -> None:
        self._client: Client | None = None
        self._cluster: Any = None
        self._owned = True
        self._local: int | None = None
        self.address: str | None = None
        if where is None or isinstance(where, str):
            kind, count = parse_dask(where or LOCAL)
            if kind == LOCAL:
                self._local = count if count is not None else resolve_workers(workers)
            else:
                self.address = str(where).strip()
        else:
            self._client, self._owned = where, False
            self.address = getattr(where.scheduler, "address", None)
            self._register(where)

    # -- the cluster -------------------------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        """The client, connecting (or starting the local cluster) on first use."""
        if self._client is None:
            self._client = self._connect()
            self._register(self._client)
        return self._client

    def _connect(self) -> Client:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise StempressError("--dask needs dask.distributed; pip install 'stempress[dask]'") from None
        if self._local is not None:
            self._cluster = LocalCluster(n_workers=self._local, threads_per_worker=1, processes=True,
                                         dashboard_address=":0")  # any free port: no clash
            client = Client(self._cluster)
            client.wait_for_workers(self._local)
            return client
        try:
            return Client(self.address, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise StempressError(f"no Dask scheduler answers at {self.address} ({exc}); start one "
                                 "(dask scheduler) or use --dask local:N") from None

    @staticmethod
    def _register(client: Client) -> None:
        client.register_plugin(_worker_plugin(), name=PLUGIN_NAME)

    @property  # type: ignore[override]
    def workers(self) -> int:
        """Local: the processes asked for; a scheduler: the workers it has now (at least one)."""
        if self._local is not None:
            return self._local
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    # -- work --------------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """``fn(*args)`` on a worker; ``pure=False``: every call runs (no hashing of large arguments)."""
        return self.client.submit(fn, *args, pure=False)  # type: ignore[return-value]

    def result(self, future: Future[R]) -> R:
        """As every executor's, with a cluster failure (workers lost again and again, the scheduler gone) said
        in one line; a task's own error is raised as it was."""
        from distributed import KilledWorker

        try:
            return self._wait_with_workers(future)
        except KilledWorker as exc:
            raise StempressError(f"Dask workers died running {exc.args[0] if exc.args else 'a task'} several "
                                 "times; check the workers' memory limit and logs") from None
        except OSError as exc:  # distributed's CommClosedError is an OSError
            if type(exc).__module__.startswith("distributed"):
                raise StempressError(f"lost the Dask scheduler at {self.address or 'the local cluster'} ({exc}); "
                                     "no output was written, rerun when it is back") from None
            raise

    def _wait_with_workers(self, future: Future[R]) -> R:
        """The future's result; a scheduler left with no workers for ``no_workers_seconds`` is said in one line
        (Dask itself would hold the task until a worker joins, so a run whose workers all died would hang)."""
        alone_since: float | None = None
        while True:
            try:
                return future.result(timeout=WAIT_POLL_SECONDS)
            except TimeoutError:
                if self.client.nthreads():
                    alone_since = None
                    continue
                alone_since = alone_since if alone_since is not None else time.monotonic()
                if time.monotonic() - alone_since >= self.no_workers_seconds:
                    raise StempressError(f"the Dask scheduler at {self.address or 'the local cluster'} has had no "
                                         f"workers for {self.no_workers_seconds:g} s; start workers (dask worker "
                                         "ADDRESS) or use --dask local:N") from None

    @contextlib.contextmanager
    def progress_link(self, report: Callable[[int, int], None]) -> Iterator[Callable[[int, int], None] | None]:
        """Progress from inside tasks through Dask's events: workers ``log_event`` on a topic of this run, this
        client is subscribed to it (the handler runs on the client's event loop; ``report`` must be thread-safe).
        A worker's events reach the scheduler on the same stream as its task results, so a partition's progress
        arrives before its result does."""
        topic = f"stempress-progress-{uuid.uuid4().hex}"
        client = self.client
        client.subscribe_topic(topic, lambda event: report(*event[1]))
        try:
            yield WorkerProgress(topic)
        finally:
            client.unsubscribe_topic(topic)

    def close(self) -> None:
        """Close the client and cluster this executor started (a client given to it stays open)."""
        client, cluster = self._client, self._cluster
        self._cluster = None
        if self._owned:
            self._client = None
            if client is not None:
                client.close()
        if cluster is not None:
            cluster.close()

    def __repr__(self) -> str:
        where = f"local:{self._local}" if self._local is not None else self.address
        return f"dask({where})"


class WorkerProgress:
    """``link(part, done)`` called inside a task on a Dask worker: one event on the run's topic (a few per
    partition, one per block read). Outside a worker (a task run in the client) it does nothing."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def __call__(self, part: int, done: int) -> None:
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:
            return
        worker.log_event(self.topic, (int(part), int(done)))
