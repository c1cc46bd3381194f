"""Check that LiberTEM-live receives ``stempress serve`` exactly as its users receive a real detector.

    python benchmarks/check_live_interop.py --venv /work/venvs/peers     # create (or reuse) the peer venv there
    python benchmarks/check_live_interop.py --only merlin

For each case, starts ``stempress serve SOURCE --as merlin|dectris --port 0 --api-port 0`` with this python (the
stempress venv), reads the two lines it prints (the ports, and the LiberTEM-live call that receives it), then,
in the peer venv of ``benchmarks/requirements-external.txt`` WITHOUT stempress (``python -I``), runs what a
LiberTEM-live user runs in passive mode, and nothing else::

    from libertem_live.api import LiveContext
    ctx = LiveContext()
    conn = ctx.make_connection("merlin").open(data_host=..., data_port=..., api_host=..., api_port=...)
    aq = ctx.make_acquisition(conn=conn, pending_aq=conn.wait_for_acquisition(10.0), nav_shape=(rows, cols))
    ctx.run_udf(dataset=aq, udf=...)

(the two middle lines verbatim as ``serve`` printed them), with a UDF that keeps every frame in its native
dtype; the frames must equal the source's bit for bit. Merlin frames are compared in the order a ``.mib``
stores their rows, which is how LiberTEM shows them (stempress shows them flipped along det_y, as
RosettaSciIO does: ``stempress.data.mib``); DECTRIS frames as they are. ``serve`` must exit 0 having sent
every frame. Merlin's clients ask its control port for IMAGEX / IMAGEY / COUNTERDEPTH, DECTRIS clients the
SIMPLON REST API for the detector configuration and to enable the stream: ``serve --api-port`` answers both.

The other way round, ``stempress live merlin://...`` receives LiberTEM-live's own Merlin simulator
(``libertem-live-mib-sim``, started in the peer venv, replaying the real ``.mib``) into an archive that must
hold the file's frames as stempress reads the file. For DECTRIS, LiberTEM-live's simulator
(``libertem-live-dectris-sim``, libertem-dectris's ``DectrisSim``) replays a recording of a detector's ZeroMQ
stream: every message part, from the ``dheader-1.0`` on, as an int64 little-endian length and the bytes (the
format its ``sim.py`` reads). Its own recorder (``libertem-dectris-tool FILE record URI``) is a Rust binary of
the LiberTEM-rs repository that the PyPI wheels do not ship and that cannot be built here (no crates.io), so
``record_dectris`` writes that format from ``stempress serve --as dectris`` (synthetic uint16, the real ARINA
file); the simulator, armed over its SIMPLON REST API as a microscope's control software does, replays it with
its own sender (headers as two single messages, the four image parts as it stored them, a footer of its own)
and ``stempress live dectris://...`` must archive the source's frames bit for bit and count nothing corrupt (it
takes a config sent as its own message after the header, as this simulator sends it, as the config; a detector
sends both as parts of one message, as ``serve`` does). The simulator's built-in ``DectrisSim.new_mocked``
stream is no detector's (image messages without ``htype``, ``frame`` or ``hash``, a zeroed bitshuffle header):
stempress live refuses every image of it.

Where ``serve`` says LiberTEM-live cannot receive the stream (an encoding libertem-dectris does not decode:
uncompressed ``<``), the case is SKIP with what it said. Prints PASS / FAIL / SKIP per case with the reason;
exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from check_plain_readers import REAL, make_venv
from stempress.data.open import open_source
from stempress.errors import StempressError


@dataclass(frozen=True)
class Case:
    label: str
    protocol: str
    spec: str
    scan: str | None = None
    encoding: str | None = None


def _synthetic(dtype: str, scan: str = "6x8", det: str = "32x24") -> str:
    return f"synthetic:diffraction?scan={scan}&det={det}&dtype={dtype}&dose=2000&seed=3"


CASES = [
    Case("Merlin real .mib, 6-bit, byte for byte", "merlin", str(REAL / "001_4x2_6bit.mib"), "2x4"),
    Case("Merlin real .mib, 6-bit, 128x128 ROI", "merlin", str(REAL / "002_4x2_6bit_roi128.mib"), "2x4"),
    Case("Merlin synthetic uint8 (6-bit)", "merlin", _synthetic("uint8")),
    Case("Merlin synthetic uint16 (12-bit)", "merlin", _synthetic("uint16")),
    Case("Merlin synthetic uint32 (24-bit)", "merlin", _synthetic("uint32")),
    Case("DECTRIS synthetic uint16 bs16-lz4<", "dectris", _synthetic("uint16"), encoding="bs16-lz4<"),
    Case("DECTRIS synthetic uint16 lz4<", "dectris", _synthetic("uint16"), encoding="lz4<"),
    Case("DECTRIS synthetic uint16 uncompressed", "dectris", _synthetic("uint16"), encoding="<"),
    Case("DECTRIS synthetic uint32 bs32-lz4<", "dectris", _synthetic("uint32"), encoding="bs32-lz4<"),
    Case("DECTRIS synthetic uint8 bs8-lz4<", "dectris", _synthetic("uint8"), encoding="bs8-lz4<"),
    Case("DECTRIS real ARINA NXmx bs16-lz4<", "dectris", str(REAL / "test_00_master.h5"), encoding="bs16-lz4<"),
]

RECEIVE = textwrap.dedent('''
    """Inside the peer venv: what a LiberTEM-live user runs, the connection lines as stempress serve printed them.
    The main guard is LiberTEM's own rule for scripts (its executor spawns worker processes)."""
    import importlib.util, json, sys, warnings
    import numpy as np
    from libertem.udf.base import UDF

    class FramesUDF(UDF):
        """Every frame, in the detector's own dtype."""
        def get_preferred_input_dtype(self):
            return self.USE_NATIVE_DTYPE

        def get_result_buffers(self):
            return {"frames": self.buffer(kind="nav", extra_shape=tuple(self.meta.dataset_shape.sig),
                                          dtype=self.meta.input_dtype)}

        def process_frame(self, frame):
            self.results.frames[:] = frame

    def main():
        assert importlib.util.find_spec("stempress") is None, "stempress is importable: the check is not independent"
        warnings.simplefilter("ignore")
        entry = json.loads(sys.argv[1])
        want = np.load(entry["npy"])
        from libertem_live.api import LiveContext

        with LiveContext() as ctx:
            names = {"ctx": ctx}
            exec(entry["call"], names)  # conn = ctx.make_connection(...).open(...); aq = ctx.make_acquisition(...)
            try:
                got = np.asarray(ctx.run_udf(dataset=names["aq"], udf=FramesUDF())["frames"].data)
            finally:
                names["conn"].close()
        if got.dtype != want.dtype or got.shape != want.shape:
            problem = f"received {got.dtype}{got.shape}, the source is {want.dtype}{want.shape}"
        elif not np.array_equal(got, want):
            bad = np.argwhere((got != want).any(axis=(2, 3)))
            problem = f"{len(bad)} of {want.shape[0] * want.shape[1]} frames differ, first at scan {tuple(bad[0])}"
        else:
            problem = None
        from importlib.metadata import version
        print(json.dumps({"problem": problem, "versions": {p: version(p) for p in (
            "libertem-live", "libertem", "libertem-qd-mpx", "libertem-dectris")}}))

    if __name__ == "__main__":
        main()
''')


def expected(case: Case, npy: Path) -> None:
    """The frames LiberTEM-live must receive: the source's, Merlin's rows in the order a ``.mib`` stores them."""
    shape = tuple(int(v) for v in case.scan.split("x")) if case.scan else None
    with open_source(case.spec, scan_shape=shape) as source:
        frames = source.read_rows(0, source.shape[0])
        flipped = case.protocol == "merlin" and source.metadata.get("det_y_flipped", True)
    np.save(npy, frames[:, :, ::-1, :] if flipped else frames)


def run_case(case: Case, python: Path, script: Path, folder: Path, timeout: float) -> tuple[str, str, dict]:
    npy = folder / f"{re.sub(r'[^A-Za-z0-9]+', '_', case.label)}.npy"
    expected(case, npy)
    serve = [sys.executable, "-m", "stempress", "serve", case.spec, "--as", case.protocol, "--port", "0",
             "--api-port", "0", "--timeout", str(int(timeout)), *(["--scan-shape", case.scan] if case.scan else []),
             *(["--encoding", case.encoding] if case.encoding else [])]
    server = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        call = lines[1].partition("LiberTEM-live: ")[2].strip()
        if call.startswith("cannot"):  # serve tells the user LiberTEM-live cannot receive this stream
            server.kill()
            server.communicate()
            return "SKIP", f"serve says LiberTEM-live {call}", {}
        if not call:
            server.kill()
            return "FAIL", f"serve printed no LiberTEM-live call: {lines!r} {server.communicate()[1][-300:]}", {}
        done = subprocess.run([str(python), "-I", str(script), json.dumps({"call": call, "npy": str(npy)})],
                              capture_output=True, text=True, timeout=timeout, cwd=folder)
        out, err = server.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        return "FAIL", f"no result within {timeout:g} s", {}
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        last = [line for line in done.stderr.splitlines() if line.strip()]
        return "FAIL", f"LiberTEM-live: {last[-1] if last else f'exit {done.returncode}'}", {}
    sent = out.strip().splitlines()[-1] if out.strip() else err.strip()[-300:]
    if result["problem"]:
        return "FAIL", result["problem"], result["versions"]
    if server.returncode != 0 or not re.search(r"[(; ]complete\)", sent):  # "(complete)", "(N/s; complete)"
        return "FAIL", f"serve: {sent}", result["versions"]
    return "PASS", sent, result["versions"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def receive_mib_sim(python: Path, folder: Path, timeout: float) -> tuple[str, str]:
    """``stempress live`` receives ``libertem-live-mib-sim`` replaying the real ``.mib``; the archive must hold
    the file's frames as stempress reads the file."""
    mib, scan = REAL / "001_4x2_6bit.mib", (2, 4)
    data, control, trigger = _free_port(), _free_port(), _free_port()
    sim = subprocess.Popen([str(python.parent / "libertem-live-mib-sim"), str(mib.with_suffix(".hdr")), "--nav-shape",
                            str(scan[0]), str(scan[1]), "--host", "127.0.0.1", "--data-port", str(data),
                            "--control-port", str(control), "--trigger-port", str(trigger)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in sim.stderr:  # type: ignore[union-attr]
            if "DataSocketServer listening" in line:
                break
        else:
            return "FAIL", "libertem-live-mib-sim did not start"
        threading.Thread(target=sim.stderr.read, daemon=True).start()  # type: ignore[union-attr] # its log
        archive = folder / "from_mib_sim.h5"
        done = subprocess.run([sys.executable, "-m", "stempress", "live", f"merlin://127.0.0.1:{data}",
                               "--scan-shape", f"{scan[0]}x{scan[1]}", "--archive", str(archive), "--timeout",
                               str(int(timeout)), "--force"], capture_output=True, text=True, timeout=timeout + 60)
    finally:
        sim.kill()  # it replays the file again for the next receiver, without end
        sim.communicate()
    summary = [line for line in done.stdout.splitlines() if line.startswith("frames:")]
    if done.returncode != 0:
        return "FAIL", (done.stderr or done.stdout).strip().splitlines()[-1]
    try:
        with open_source(str(mib), scan_shape=scan) as source, open_source(str(archive)) as got:
            same = np.array_equal(got.read_rows(0, scan[0]), source.read_rows(0, scan[0]))
    except StempressError as exc:
        return "FAIL", str(exc)
    return ("PASS", summary[-1] if summary else "") if same else ("FAIL", "the archive's frames differ from the file")


#: What ``stempress live`` receives from LiberTEM-live's DECTRIS simulator: (label, source, scan, encoding).
DECTRIS_SIM_CASES = [
    ("synthetic uint16 bs16-lz4<", _synthetic("uint16"), None, "bs16-lz4<"),
    ("real ARINA NXmx bs16-lz4<", str(REAL / "test_00_master.h5"), None, "bs16-lz4<"),
]


def record_dectris(spec: str, encoding: str, dump: Path, timeout: float) -> str | None:
    """Record ``stempress serve SPEC --as dectris`` into the file format LiberTEM-live's DECTRIS simulator
    replays (each message part: int64 LE length, bytes; from the series header to its end). None, or what
    went wrong."""
    import zmq

    serve = [sys.executable, "-m", "stempress", "serve", spec, "--as", "dectris", "--port", "0", "--encoding",
             encoding, "--timeout", str(int(timeout))]
    server = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = re.search(r" on [^ ]+:(\d+), control", server.stdout.readline())  # type: ignore[union-attr]
    if found is None:
        server.kill()
        return f"serve printed no port: {server.communicate()[1][-300:]}"
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.connect(f"tcp://127.0.0.1:{found.group(1)}")
    try:
        with open(dump, "wb") as out:
            while True:
                parts = sock.recv_multipart()
                for part in parts:
                    out.write(struct.pack("<q", len(part)) + part)
                if b"dseries_end" in parts[0]:
                    break
    except zmq.Again:
        return f"no series end within {timeout:g} s"
    finally:
        sock.close(linger=0)
        context.term()
        server.communicate(timeout=timeout)
    return None if server.returncode == 0 else f"serve exited {server.returncode}"


def _arm(api_port: int, sim: subprocess.Popen, timeout: float) -> None:
    """What a microscope's control software does to start the detector: PUT .../command/arm (retried while the
    simulator starts its API; raises once it has exited or ``timeout`` passed)."""
    request = urllib.request.Request(f"http://127.0.0.1:{api_port}/detector/api/1.8.0/command/arm", data=b"{}",
                                     method="PUT", headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                answer.read()
            return
        except OSError:
            if sim.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _stop(sim: subprocess.Popen) -> None:
    """SIGTERM (the simulator stops its API server and replay thread), else SIGKILL to its process group."""
    sim.terminate()
    try:
        sim.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(sim.pid, signal.SIGKILL)
        sim.wait()


def _logged_port(log: list[str], sim: subprocess.Popen, timeout: float) -> int | None:
    """The ZeroMQ port the DECTRIS simulator says it listens on ("RustedReplay listening on tcp://HOST:PORT")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sim.poll() is None:
        for line in list(log):
            if found := re.search(r"listening on tcp://[^:]+:(\d+)", line):
                return int(found.group(1))
        time.sleep(0.1)
    return None


def receive_dectris_sim(python: Path, folder: Path, timeout: float, label: str, spec: str, scan: str | None,
                        encoding: str) -> tuple[str, str]:
    """``stempress live dectris://...`` receives ``libertem-live-dectris-sim`` replaying a recording of ``serve``;
    the archive must hold the source's frames bit for bit."""
    dump = folder / f"{re.sub(r'[^A-Za-z0-9]+', '_', label)}.dump"
    problem = record_dectris(spec, encoding, dump, timeout)
    if problem:
        return "FAIL", f"recording serve: {problem}"
    # --zmqport 0: with a fixed port (its default 9999 too) the simulator of libertem-live 0.3.0 panics
    # "should be possible to bind the zmq socket" (reading the headers binds it once already); it logs the port
    api = _free_port()
    sim = subprocess.Popen([str(python.parent / "libertem-live-dectris-sim"), str(dump), "--port", str(api),
                            "--zmqport", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its API server is a child process: stopped with it
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(sim.stderr), daemon=True).start()  # type: ignore[arg-type]
    zmq_port = _logged_port(log, sim, timeout)
    if zmq_port is None:
        _stop(sim)
        said = [line.strip() for line in log if line.strip()]
        return "FAIL", f"libertem-live-dectris-sim did not listen: {said[-1] if said else 'no log'}"
    shape = tuple(int(v) for v in scan.split("x")) if scan else None
    with open_source(spec, scan_shape=shape) as source:
        want, rows, cols = source.read_rows(0, source.shape[0]), source.shape[0], source.shape[1]
    archive = folder / "from_dectris_sim.h5"
    try:
        live = subprocess.Popen([sys.executable, "-m", "stempress", "live", f"dectris://127.0.0.1:{zmq_port}",
                                 "--scan-shape", f"{rows}x{cols}", "--archive", str(archive), "--timeout",
                                 str(int(timeout)), "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        _arm(api, sim, timeout)
        out, err = live.communicate(timeout=timeout + 60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        live.kill()
        said = [line.strip() for line in log if line.strip()]
        return "FAIL", f"{type(exc).__name__}: {exc}" + (f"; the simulator said: {said[-1]}" if said else "")
    finally:
        _stop(sim)
    summary = [line for line in out.splitlines() if line.startswith("frames:")]
    if live.returncode != 0:
        return "FAIL", (err or out).strip().splitlines()[-1]
    try:
        with open_source(str(archive)) as got:
            same = np.array_equal(got.read_rows(0, rows), want)
    except StempressError as exc:
        return "FAIL", str(exc)
    if not same:
        return "FAIL", "the archive's frames differ from the source"
    if not summary or " corrupt 0 " not in summary[-1]:
        return "FAIL", f"messages counted corrupt: {summary[-1] if summary else 'no summary line'}"
    return "PASS", summary[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=None, help="venv folder to create or reuse (default: temp)")
    parser.add_argument("--only", choices=("merlin", "dectris"), default=None, help="one protocol only")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per case")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only in (None, c.protocol)]
    with tempfile.TemporaryDirectory(prefix="stempress-live-interop-") as scratch:
        folder = Path(scratch)
        script = folder / "receive.py"
        script.write_text(RECEIVE)
        python = make_venv(args.venv or folder / "venv")
        results, versions = [], {}
        for case in cases:
            status, why, found = run_case(case, python, script, folder, args.timeout)
            versions.update(found)
            results.append(status)
            print(f"{status} {case.label}: {why}", flush=True)
        if args.only in (None, "merlin"):
            status, why = receive_mib_sim(python, folder, args.timeout)
            results.append(status)
            print(f"{status} stempress live <- libertem-live-mib-sim (real .mib): {why}", flush=True)
        if args.only in (None, "dectris"):
            for label, spec, scan, encoding in DECTRIS_SIM_CASES:
                status, why = receive_dectris_sim(python, folder, args.timeout, label, spec, scan, encoding)
                results.append(status)
                print(f"{status} stempress live <- libertem-live-dectris-sim replaying serve ({label}): {why}",
                      flush=True)
    print("peer venv:", ", ".join(f"{p} {v}" for p, v in versions.items()) or "no versions (nothing received)")
    failed = results.count("FAIL")
    print("ALL PASS" if not failed else f"{failed} LIVE INTEROP CHECK(S) FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
