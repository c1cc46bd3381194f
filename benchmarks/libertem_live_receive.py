"""Runs in the peer venv, WITHOUT stempress (``python -I``): receive one acquisition with LiberTEM-live as its
users do (passive mode: the detector is armed by someone else, here ``stempress serve``) and run ``SumUDF`` and
``CoMUDF`` on it in one pass. Used by ``benchmarks/live_throughput.py --libertem-live PYTHON``.

    python -I libertem_live_receive.py '{"protocol": "merlin", "host": "127.0.0.1", "data_port": 1,
        "api_port": 2, "nav_shape": [4, 256], "cy": 127.5, "cx": 127.5, "r": 90.5, "out": "theirs.npz"}'

Saves the sum pattern and the CoM shifts to ``out`` (npz) and prints one JSON line: the context's start-up and
the receive's seconds, ``time.monotonic()`` when the results were saved (before the context shuts down), and the
versions. The main guard is LiberTEM's rule for scripts (its
pipelined executor spawns worker processes).
"""

import importlib.util
import json
import sys
import time
import warnings
from importlib.metadata import version

import numpy as np


def main() -> None:
    assert importlib.util.find_spec("stempress") is None, "stempress is importable: the comparison is not independent"
    warnings.simplefilter("ignore")
    job = json.loads(sys.argv[1])
    from libertem.udf.com import CoMUDF
    from libertem.udf.sum import SumUDF
    from libertem_live.api import LiveContext

    started = time.perf_counter()
    with LiveContext() as ctx:
        ready = time.perf_counter()
        conn = ctx.make_connection(job["protocol"]).open(
            data_host=job["host"], data_port=job["data_port"], api_host=job["host"], api_port=job["api_port"])
        try:
            pending = conn.wait_for_acquisition(30.0)
            if pending is None:
                raise SystemExit("LiberTEM-live: no acquisition within 30 s")
            aq = ctx.make_acquisition(conn=conn, pending_aq=pending, nav_shape=tuple(job["nav_shape"]))
            udfs = [SumUDF(), CoMUDF.with_params(cy=job["cy"], cx=job["cx"], r=job["r"])]
            total, com = ctx.run_udf(dataset=aq, udf=udfs, progress=False)
        finally:
            conn.close()
        done = time.perf_counter()
        np.savez(job["out"], sum=np.asarray(total["intensity"].data), shifts=np.asarray(com["raw_shifts"].data))
        saved_at = time.monotonic()  # every result there (the clock the sender's process reads too)
    versions = {p: version(p) for p in ("libertem-live", "libertem", "libertem-qd-mpx", "libertem-dectris")}
    print(json.dumps({"context_seconds": ready - started, "receive_seconds": done - ready, "saved_at": saved_at,
                      "versions": versions}))


if __name__ == "__main__":
    main()
