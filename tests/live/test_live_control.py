"""``serve``'s detector control interfaces (``live.control``): Merlin's control port and DECTRIS's SIMPLON REST API,
spoken as the clients that need them (LiberTEM-live's ``MerlinControl`` and ``DEigerClient``) speak them."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from stempress.data.open import open_source
from stempress.live import LiveSource
from stempress.live.dectris import image_parts
from stempress.live.merlin import mpx_message
from stempress.live.serve import libertem_live_call, serve


def _cube() -> np.ndarray:
    return np.random.default_rng(3).poisson(2.0, (3, 4, 10, 12)).astype(np.uint16)


def _serve_with_api(cube: np.ndarray, protocol: str) -> tuple[int, int, dict]:
    ready, ports, out = threading.Event(), {}, {}

    def run() -> None:
        try:
            out["log"] = serve(open_source(cube), protocol, timeout=10, api_port=0, api_linger=1.0,
                               api_ready=lambda p: ports.update(api=p),
                               ready=lambda p: (ports.update(data=p), ready.set()))
        except Exception as exc:
            out["error"] = exc
            ready.set()

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    assert ready.wait(30) and "data" in ports, out.get("error")
    return ports["data"], ports["api"], out


def _merlin_command(port: int, command: str) -> list[bytes]:
    """One command as LiberTEM-live's MerlinControl sends it; the reply split on commas."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(mpx_message(command.encode()))
        return sock.recv(4096).split(b",")


def test_merlin_control_port_answers_after_the_whole_stream_went_out():
    cube = _cube()
    data, api, out = _serve_with_api(cube, "merlin")
    live = LiveSource(f"merlin://127.0.0.1:{data}", cube.shape[:2], timeout=10)
    frames = np.concatenate([b.data for b in live.blocks()])
    assert np.array_equal(frames, cube)  # the data stream is unchanged by the control port
    # a short scan is over before a client asks its settings: the port still answers (LiberTEM-live reads
    # IMAGEX, IMAGEY, COUNTERDEPTH right after the acquisition header); value at [4], status at [5]
    reply = _merlin_command(api, "GET,IMAGEX,0")
    assert reply[:3] == [b"MPX", reply[1], b"GET"] and reply[3:] == [b"IMAGEX", b"12", b"0"]
    assert _merlin_command(api, "GET,IMAGEY,0")[4:] == [b"10", b"0"]
    assert _merlin_command(api, "GET,COUNTERDEPTH,0")[4:] == [b"12", b"0"]
    assert _merlin_command(api, "GET,NOSUCHPARAM,0")[5] == b"2"  # unrecognised
    assert _merlin_command(api, "SET,IMAGEX,256")[4] == b"3"  # a replay cannot change its frames
    assert _merlin_command(api, "CMD,STARTACQUISITION,0")[4] == b"0"
    out["thread"].join(30)
    assert not out["thread"].is_alive() and out["log"].ended == "complete"
    with pytest.raises(OSError):  # once idle for api_linger, it is gone with the rest of serve
        socket.create_connection(("127.0.0.1", api), timeout=2).close()


def _rest(port: int, method: str, path: str, value: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    body = None if value is None else json.dumps({"value": value})
    conn.request(method, path, body=body, headers={"Content-type": "application/json; charset=utf-8"})
    response = conn.getresponse()
    status, data = response.status, json.loads(response.read())
    conn.close()
    return status, data


def test_dectris_simplon_rest_api_gives_the_detector_config_and_takes_the_stream_settings():
    cube = _cube()
    data, api, out = _serve_with_api(cube, "dectris")
    assert _rest(api, "GET", "/detector/api/version/") == (200, {"value": "1.8.0", "value_type": "string"})
    config = "/detector/api/1.8.0/config/"
    assert _rest(api, "GET", config + "x_pixels_in_detector")[1]["value"] == 12
    assert _rest(api, "GET", config + "y_pixels_in_detector")[1]["value"] == 10
    assert _rest(api, "GET", config + "bit_depth_image")[1]["value"] == 16
    assert _rest(api, "GET", config + "ntrigger")[1]["value"] == 12
    assert _rest(api, "PUT", "/stream/api/1.8.0/config/mode", "enabled")[0] == 200
    assert _rest(api, "PUT", "/stream/api/1.8.0/config/header_detail", "basic")[0] == 200
    assert _rest(api, "PUT", config + "ntrigger", 99)[0] == 400  # a replay cannot change the scan
    assert _rest(api, "GET", config + "no_such_thing")[0] == 404
    live = LiveSource(f"dectris://127.0.0.1:{data}", cube.shape[:2], timeout=10)
    assert np.array_equal(np.concatenate([b.data for b in live.blocks()]), cube)
    out["thread"].join(30)
    assert out["log"].ended == "complete"


@pytest.mark.parametrize("encoding", ["bs16-lz4<", "<"])
def test_dectris_image_carries_the_md5_of_its_data(encoding):
    """Receivers that parse the image header strictly (libertem-dectris) refuse an empty hash."""
    parts = image_parts(5, _cube()[0, 0], encoding)
    assert json.loads(parts[0])["hash"] == hashlib.md5(parts[2]).hexdigest()


def test_libertem_live_call_is_python_naming_both_ports_and_the_scan():
    call = libertem_live_call("merlin", "127.0.0.1", 6342, 6341, (3, 4))
    compile(call, "<serve>", "exec")
    assert "make_connection('merlin')" in call and "data_port=6342" in call and "api_port=6341" in call
    assert "nav_shape=(3, 4)" in call and "pending_aq=conn.wait_for_acquisition(" in call


def test_libertem_live_line_says_when_it_cannot_decode_the_encoding():
    line = libertem_live_call("dectris", "127.0.0.1", 9999, 80, (3, 4), "<")
    assert line.startswith("cannot decode the '<' encoding") and "--encoding bs16-lz4<" in line
    assert libertem_live_call("dectris", "127.0.0.1", 9999, 80, (3, 4), "lz4<").startswith("conn = ")


def test_serve_command_prints_both_ports_and_the_libertem_live_call_that_works(tmp_path):
    cube = _cube()
    np.save(tmp_path / "cube.npy", cube)
    proc = subprocess.Popen([sys.executable, "-m", "stempress", "serve", str(tmp_path / "cube.npy"), "--as", "merlin",
                             "--port", "0", "--api-port", "0", "--timeout", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"on 127\.0\.0\.1:(\d+), control API on 127\.0\.0\.1:(\d+)", first)
        assert found, (first, second)
        data, api = int(found.group(1)), int(found.group(2))
        assert second.startswith("LiberTEM-live: conn = ") and f"data_port={data}" in second
        assert f"api_port={api}" in second and "nav_shape=(3, 4)" in second
        assert _merlin_command(api, "GET,COUNTERDEPTH,0")[4:] == [b"12", b"0"]
        live = LiveSource(f"merlin://127.0.0.1:{data}", cube.shape[:2], timeout=10)
        assert np.array_equal(np.concatenate([b.data for b in live.blocks()]), cube)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.communicate()
