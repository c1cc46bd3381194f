"""Dask as an executor: the same sinks on a cluster give the same bits as inline (one LocalCluster of two worker
processes for the whole module: starting one costs seconds)."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from stempress.errors import StempressError
from stempress.exec import make_executor
from stempress.exec.dask import DaskExecutor, parse_dask


@pytest.fixture(scope="module")
def dask() -> DaskExecutor:
    with DaskExecutor("local:2") as executor:
        yield executor


def _thread_counts() -> list[int]:
    import blosc2  # its default is one thread per core; the worker plugin sets one
    from threadpoolctl import threadpool_info

    return [int(pool["num_threads"]) for pool in threadpool_info()] + [int(blosc2.nthreads)]


def test_addresses_are_parsed_without_starting_a_cluster():
    assert parse_dask("local") == ("local", None)
    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("tcp://node7:8786") == ("address", None)
    assert make_executor("dask:local:3").workers == 3  # known without a cluster: none was started
    remote = make_executor("dask", 2, address="tcp://node7:8786")
    assert isinstance(remote, DaskExecutor) and remote.address == "tcp://node7:8786" and remote.remote
    for bad in ("local:0", "local:two", "node7"):
        with pytest.raises(StempressError, match="--dask"):
            parse_dask(bad)
    with pytest.raises(StempressError, match="takes no address"):
        make_executor("threads", 2, address="tcp://node7:8786")


def test_tasks_come_back_in_order_from_workers_limited_to_one_thread(dask):
    assert dask.workers == 2
    assert list(dask.map_ordered(abs, range(-6, 6), in_flight=3)) == [abs(i) for i in range(-6, 6)]
    limits = dask.client.run(_thread_counts)
    assert len(limits) == 2 and all(counts and set(counts) == {1} for counts in limits.values())
    with pytest.raises(ZeroDivisionError):  # a task's own error is raised as it was
        list(dask.map_ordered(lambda x: 1 // x, [1, 0, 2]))
