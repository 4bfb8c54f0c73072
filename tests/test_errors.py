"""The error tree (eve.core.errors): who failed travels with the error. No servers."""

from __future__ import annotations

import pickle

import pytest

from eve.core import frames
from eve.core.errors import (
    AuthError,
    EndpointError,
    EveError,
    FrameError,
    LogicalCopyError,
    ProtocolError,
    Side,
    SourceError,
    TargetError,
    UnavailableError,
    UnsupportedTypeError,
    who_failed,
)
from eve.redis import logical, resp


def test_every_error_eve_raises_on_purpose_is_in_the_tree() -> None:
    for cls in (ProtocolError, FrameError, LogicalCopyError, UnsupportedTypeError):
        assert issubclass(cls, EveError), cls
    # the modules that raise them name the same classes
    assert resp.ProtocolError is ProtocolError
    assert frames.FrameError is FrameError
    assert logical.LogicalCopyError is LogicalCopyError and logical.UnsupportedTypeError is UnsupportedTypeError
    assert issubclass(FrameError, ValueError)  # callers that caught ValueError still do


def test_side_of_an_endpoint_error() -> None:
    assert SourceError("x").side is Side.SOURCE
    assert TargetError("x").side is Side.TARGET
    assert UnavailableError("127.0.0.1:1 refused").side is None
    down = UnavailableError("127.0.0.1:1 refused", side="target")
    assert down.side is Side.TARGET and who_failed(down) is Side.TARGET
    assert str(down) == "127.0.0.1:1 refused"
    # on_side fills in a side the raiser did not know, and never overrides one it knew
    assert AuthError("NOAUTH").on_side(Side.SOURCE).side is Side.SOURCE
    assert SourceError("x").on_side(Side.TARGET).side is Side.SOURCE
    assert who_failed(RuntimeError("bug")) is Side.INTERNAL
    assert who_failed(EndpointError("no side")) is Side.INTERNAL
    with pytest.raises(ValueError):
        UnavailableError("x", side="elsewhere")


@pytest.mark.parametrize("error", [UnavailableError("down", side=Side.TARGET), SourceError("gone"),
                                   AuthError("WRONGPASS", side=Side.SOURCE)], ids=lambda e: type(e).__name__)
def test_side_survives_pickling(error: EndpointError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.args == error.args and copy.side is error.side


def test_failed_frame_carries_a_side_value() -> None:
    frame = frames.decode(frames.encode(frames.Failed("restorer-1", "target", "unreachable")))
    assert isinstance(frame, frames.Failed) and frame.who is Side.TARGET
    with pytest.raises(FrameError, match="'nobody' as who failed"):
        frames.Failed("scanner-1", "nobody", "?")


def test_unsupported_type_message_names_the_types() -> None:
    error = UnsupportedTypeError("graphdata", logical.TYPES)
    assert "'graphdata'" in str(error) and "only string, hash" in str(error) and error.type == "graphdata"
