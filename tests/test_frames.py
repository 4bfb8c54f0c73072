"""Frames between scanners, restorers and the coordinator: unit tests, no servers."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eve.core import frames

pytestmark = pytest.mark.timeout(60)

headers = st.builds(
    frames.BatchHeader, run_id=st.text(max_size=20), node=st.text(max_size=30), db=st.integers(0, 15),
    epoch=st.integers(0, 100), seq=st.integers(0, 10**9), cursor=st.integers(0, 2**64 - 1), last=st.booleans(),
    scanned=st.integers(0, 10**6), skipped=st.integers(0, 10**6),
    trace=st.dictionaries(st.text(max_size=12), st.text(max_size=60), max_size=3))
rows = st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 2**62), st.binary(max_size=200)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(header=headers, rows=rows)
def test_batch_round_trip(header, rows):
    batch = frames.Batch(header, rows)
    assert frames.decode(frames.encode(batch)) == batch


@settings(max_examples=100, deadline=None)
@given(header=headers, keys=st.lists(st.binary(max_size=30), max_size=5))
def test_result_round_trip(header, keys):
    result = frames.Result(header, "restorer-1", 3, 1, 1, len(keys), 99,
                           [frames.ErrorKeyRow(k, 0, "127.0.0.1:1", "hash", 10, "OOM", 3) for k in keys],
                           [frames.ConflictRow(k, 0, "string", "BUSYKEY") for k in keys])
    assert frames.decode(frames.encode(result)) == result


def test_stop_and_failed():
    assert frames.decode(frames.encode(frames.Stop("scanner node=a:1"))) == frames.Stop("scanner node=a:1")
    failed = frames.Failed("restorer-2", "target", "127.0.0.1:7000 unreachable for 30s")
    assert frames.decode(frames.encode(failed)) == failed


def test_other_version_and_garbage_refused():
    other = msgpack.packb([frames.FORMAT_VERSION + 1, "STOP", ["x"]])
    with pytest.raises(frames.FrameError, match="format version"):
        frames.decode(other)
    with pytest.raises(frames.FrameError):
        frames.decode(b"\xc1not msgpack")
    with pytest.raises(frames.FrameError, match="unknown frame kind"):
        frames.decode(msgpack.packb([frames.FORMAT_VERSION, "NOPE", []]))
    with pytest.raises(TypeError):
        frames.encode("not a frame")  # type: ignore[arg-type]
