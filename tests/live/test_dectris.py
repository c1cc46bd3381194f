"""SIMPLON stream v1 receiving (live.dectris): the series header's two forms, and bitshuffle's OpenMP threads in the
receiver, over real ZeroMQ on loopback."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stempress.live import LiveSource
from stempress.live.dectris import end_parts, header_parts, image_parts

CONFIG = {"trigger_mode": "exte", "ntrigger": 6, "x_pixels_in_detector": 12, "y_pixels_in_detector": 10}


def _frames() -> np.ndarray:
    return np.random.default_rng(5).poisson(2.0, (6, 10, 12)).astype(np.uint16)


def _push_series(form: str, frames: np.ndarray) -> tuple[int, threading.Thread, list]:
    """A hand-made detector on a free loopback port, in a thread: the series header as ``form`` ('multipart': header
    and config as parts of one message, as SIMPLON detectors send them; 'split': each its own message, as
    LiberTEM-live's DECTRIS simulator sends them; 'no config': the header alone), bitshuffle-LZ4 images, the end."""
    import zmq

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    errors: list = []

    def run() -> None:
        try:
            head, config = header_parts(7, CONFIG)
            if form == "multipart":
                push.send_multipart([head, config])
            elif form == "split":
                push.send(head)
                push.send(config)
            else:
                push.send(head)
            for number, frame in enumerate(frames):
                push.send_multipart(image_parts(number, frame, "bs16-lz4<", series=7))
            push.send_multipart(end_parts(7))
        except Exception as exc:  # the test fails on it
            errors.append(exc)
        finally:
            push.close()
            context.term()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread, errors


@pytest.mark.parametrize("form, config", [("multipart", CONFIG), ("split", CONFIG), ("no config", {})])
def test_the_detector_config_is_kept_whether_it_is_a_part_of_the_header_or_its_own_message(form, config):
    frames = _frames()
    port, thread, errors = _push_series(form, frames)
    live = LiveSource(f"dectris://127.0.0.1:{port}", (2, 3), timeout=10)
    got = np.concatenate([b.data for b in live.blocks()])
    thread.join(10)
    assert not errors
    assert np.array_equal(got.reshape(frames.shape), frames)
    a = live.account
    assert (a.received, a.missing, a.corrupt, a.ended) == (6, 0, 0, "complete")
    assert live.metadata["detector_config"] == config
    assert live.metadata["series"] == 7


def _bitshuffle_openmp_threads() -> int:
    """The OpenMP thread count bitshuffle's own runtime would use for a call from this thread."""
    from threadpoolctl import threadpool_info

    found = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp" and "bitshuffle" in i["filepath"]]
    assert found, "bitshuffle's OpenMP runtime is not loaded"
    return found[0]


def test_the_receiver_thread_decodes_bitshuffle_frames_with_one_openmp_thread_and_leaves_other_threads_alone(
        monkeypatch):
    """A 96x96 frame gains nothing from an OpenMP team, whose start-up on a busy small machine costs several times
    the frame; the limit holds in the receiving thread without OMP_NUM_THREADS, and only there. (The receiver run
    in a thread of this process, ``thread=True``, so the test sees it: the same code runs in the child process.)"""
    import bitshuffle  # noqa: F401 - its OpenMP runtime loaded, so a fresh thread's default team can be read

    from stempress.live.dectris import DectrisReader

    def in_a_fresh_thread() -> int:
        found: list[int] = []
        fresh = threading.Thread(target=lambda: found.append(_bitshuffle_openmp_threads()))
        fresh.start()
        fresh.join()
        return found[0]

    # the runtime's default for new threads, fixed when it loaded (OMP_NUM_THREADS then, which a library imported
    # since, such as distributed, may have changed in os.environ without effect on it)
    default = in_a_fresh_thread()
    frames = _frames()
    port, thread, errors = _push_series("multipart", frames)
    seen: dict = {}
    events = DectrisReader.events

    def watched(self, stop):  # observes the real reader in the receiver's thread after each frame or batch of them
        for event in events(self, stop):  # (the last: decoded there)
            if hasattr(event, "data"):
                seen["threads"] = _bitshuffle_openmp_threads()
                seen["name"] = threading.current_thread().name
            yield event

    monkeypatch.setattr(DectrisReader, "events", watched)
    live = LiveSource(f"dectris://127.0.0.1:{port}", (2, 3), timeout=10, thread=True)
    got = np.concatenate([b.data for b in live.blocks()])
    thread.join(10)
    assert not errors and np.array_equal(got.reshape(frames.shape), frames)
    assert seen == {"threads": 1, "name": "stempress-live-receiver"}
    assert in_a_fresh_thread() == default  # a thread that never decoded keeps the runtime's default team


@pytest.mark.parametrize(("head", "number"), [
    (b'{"htype": "dimage-1.0", "series": 3, "frame": 17, "hash": "ab01"}', 17),  # json.dumps's spacing
    (b'{"htype":"dimage-1.0","series":3,"frame":0,"hash":""}', 0),  # a detector's compact JSON
    (b' {\n "htype" : "dimage-1.0",\t"series": -1, "frame": 9 , "hash": "F0"}\r\n', 9),
    (b'{"frame": 12, "htype": "dimage-1.0", "series": 3, "hash": "ab01"}', 12),  # other key order: json.loads
    (b'{"htype": "dimage-1.0", "series": 3, "frame": 5.0, "hash": "ab01"}', 5),  # as int() took it before
    (b'{"htype": "dimage-1.0", "series": 3, "frame": 007, "hash": "ab01"}', None),  # not JSON: corrupt
    (b'{"htype": "dimage-1.0", "series": 3, "frame": 8, "hash": "ab01"', None),  # cut: corrupt
    (b'{"htype": "dimage-1.0", "series": 3, "hash": "ab01"}', None)])  # no frame number: corrupt
def test_an_image_header_gives_its_frame_number_exactly_as_json_reads_it(head, number):
    from stempress.errors import StempressError
    from stempress.live.dectris import parse_image

    frame = _frames()[0]
    _, desc, data, config = image_parts(0, frame, "bs16-lz4<")
    if number is None:
        with pytest.raises(StempressError, match="unreadable image header"):
            parse_image([head, desc, data, config])
        return
    got = parse_image([head, desc, data, config])
    assert got.number == number and np.array_equal(got.data, frame)


def test_image_descriptions_are_parsed_once_per_distinct_part_and_a_bad_one_is_refused_every_time():
    from stempress.errors import StempressError
    from stempress.live import dectris

    frames = _frames()
    messages = [image_parts(i, f, "bs16-lz4<") for i, f in enumerate(frames)]
    for i, parts in enumerate(messages):
        assert np.array_equal(dectris.parse_image(parts).data, frames[i])
    assert all(dectris._DESCRIPTIONS[parts[1]].size == len(parts[2]) for parts in messages)
    desc = messages[0][1]
    for bad in (desc.replace(b"[12, 10]", b'[12, "a"]'), desc.replace(b"[12, 10]", b"3"), b"[1, 2]",
                desc.replace(b'"size": ', b'"size": "x", "other": '), desc.replace(b"uint16", b"uint99")):
        for _ in range(2):
            with pytest.raises(StempressError, match="unreadable image header"):
                dectris.parse_image([messages[0][0], bad, *messages[0][2:]])
    short = [messages[1][0], messages[1][1], messages[1][2][:-8], messages[1][3]]
    with pytest.raises(StempressError, match="short or corrupt"):
        dectris.parse_image(short)


def test_the_image_head_is_the_json_a_detector_sends_byte_for_byte():
    import json

    from stempress.live.dectris import image_head

    for series, number, digest in ((1, 0, "d41d8cd98f00b204e9800998ecf8427e"), (7, 123456789, "ab"), (-2, 5, "")):
        expected = json.dumps({"htype": "dimage-1.0", "series": series, "frame": number, "hash": digest}).encode()
        assert image_head(number, digest.encode(), series) == expected


def test_serve_encodes_a_repeated_frame_once_keyed_on_its_content_not_on_the_array():
    from stempress.live.serve import _Repeats

    calls: list[bytes] = []

    def encode(frame: np.ndarray) -> tuple[bytes]:
        calls.append(frame.tobytes())
        return (frame.tobytes(),)

    repeats = _Repeats(encode, max_bytes=3 * 240)
    frames = _frames()  # 6 frames of 10x12 uint16: 240 bytes each
    assert [repeats(frames[i % 2])[0] for i in range(4)] == [frames[i % 2].tobytes() for i in range(4)]
    assert len(calls) == 2  # each content encoded once
    frames[0, 0, 0] += 1  # the same array, other content: encoded again, never taken for the old one
    assert repeats(frames[0])[0] == frames[0].tobytes() and len(calls) == 3
    assert repeats(frames[2].copy())[0] == frames[2].tobytes() and repeats(frames[2])[0] == frames[2].tobytes()
    assert len(calls) == 5 and repeats.bytes == 3 * 240  # over max_bytes: encoded each time, not held
    plain = _Repeats(encode, probe=3)
    for frame in frames[:5]:  # nothing repeated in the first 3: no more keys taken
        plain(frame)
    assert plain.seen == 3 and len(plain.held) == 3


@pytest.mark.parametrize(("sent", "slot_frames", "expected_batches"), [
    ([0, 1, 2, "3 corrupt", 4, 6, 5, 5, 7], 64, [[1, 2]]),  # 6 before 5, 5 twice
    ([0, 1, 2, "3 corrupt", 4, 6, 5, 5, 7], 3, [[1, 2]]),  # the same across three buffers (4 fills the first)
    (list(range(8)), 3, [[1, 2, 3], [4, 5, 6]])])  # a batch ends where its buffer does
def test_frames_queued_back_to_back_go_on_as_batches_and_every_fault_still_comes_one_by_one(
        monkeypatch, sent, slot_frames, expected_batches):
    """The reader's own batching, fed a fixed queue of messages (the socket's receive replaced by the list: ZeroMQ
    itself is not under test): consecutive frames already queued join one batch event (where the receiver takes
    batches); a corrupt, reordered, duplicated or non-consecutive message ends it and goes on as before; frames
    decoded into a buffer's slots stay intact once it is full and the next one fills."""
    import zmq

    from stempress.live import events, zmq_pull
    from stempress.live.dectris import DectrisReader

    monkeypatch.setattr(zmq_pull, "SLOT_FRAMES", slot_frames)
    frames = np.random.default_rng(9).poisson(2.0, (8, 10, 12)).astype(np.uint16)
    queue = [header_parts(1, CONFIG)]
    for n in sent:
        parts = image_parts(int(str(n)[0]), frames[int(str(n)[0])], "bs16-lz4<")
        queue.append([b"{not json", *parts[1:]] if "corrupt" in str(n) else parts)
    queue.append(end_parts(1))

    def parts(flags: int) -> list[bytes]:
        if not queue:
            raise zmq.Again()
        return queue.pop(0)

    reader = DectrisReader("127.0.0.1", 9, timeout=1)
    try:
        monkeypatch.setattr(reader, "_parts", parts)
        reader.start()
        got = list(reader.events(threading.Event()))
    finally:
        reader.close()
    flat, batches = [], []
    for event in got:
        if hasattr(event, "numbers"):  # a batch
            batches.append(event.numbers.tolist())
            flat += [(n, d) for n, d in zip(event.numbers.tolist(), event.data, strict=True)]
        elif hasattr(event, "number"):
            flat.append((event.number, event.data))
        else:
            flat.append((type(event).__name__, None))
    assert [n for n, _ in flat] == [n if isinstance(n, int) else "Corrupt" for n in sent] + ["End"]
    assert all(np.array_equal(d, frames[n]) for n, d in flat if isinstance(n, int))
    assert batches == (expected_batches if hasattr(events, "Frames") else [])
