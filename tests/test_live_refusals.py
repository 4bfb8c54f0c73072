"""A side that refuses writes during catch-up (issue 19, item 4): the events say why
(the target out of memory, a read-only replica...), not only that the backlog grows."""

from __future__ import annotations

import threading

import pytest

from eve.core.endpoints import ConnectionSpec
from eve.live.recopy import RecopyResult, refusing_text
from eve.live.run import LiveOptions, LiveRun
from eve.redis.cluster import refusal

OOM_REPLY = "OOM command not allowed when used memory > 'maxmemory'."


def spec(server) -> ConnectionSpec:
    return ConnectionSpec(server.host, server.port, password=server.password)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_catch_up_events_say_the_target_is_out_of_memory(server_factory) -> None:
    source = server_factory("redis-7.0")
    target = server_factory("redis-7.0", extra_args=["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"])
    writer = source.client()
    pipe = writer.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"big:{i}", "v" * 10_000)  # 3 MB: more than the target holds
    pipe.execute()
    events: list[tuple[str, str, dict]] = []
    seen_reason = threading.Event()

    def on_event(kind: str, message: str, attributes: dict) -> None:
        events.append((kind, message, attributes))
        if kind == "progress" and "OOM" in message:
            seen_reason.set()

    live = LiveRun(LiveOptions(run_id="oom", interlay_id="none", source=spec(source), target=spec(target),
                               sync_workers=1), interlays=None, on_event=on_event)
    try:
        for i in range(300):
            live.dirty.mark(0, f"big:{i}".encode())
        live.start_sync()
        catching_up = threading.Thread(target=live.catch_up, args=(seen_reason,),
                                       kwargs={"backlog": 0, "steady_seconds": 60}, daemon=True)
        catching_up.start()
        assert seen_reason.wait(60), f"no catch-up event said why: {[e[1] for e in events]}"
        catching_up.join(10)
    finally:
        live.close()
    progress = [(message, attributes) for kind, message, attributes in events if kind == "progress" and "OOM" in message]
    message, attributes = progress[-1]
    assert message.startswith("catching up: ")
    address = f"{target.host}:{target.port}"
    assert f"{address} refuses writes: OOM (out of memory: used memory is over maxmemory" in message, message
    assert OOM_REPLY in message
    assert attributes["refusing"] in message
    # The source is fine: only the target is named.
    assert f"{source.host}:{source.port}" not in message


@pytest.mark.parametrize("reply, said", [
    (OOM_REPLY, "OOM (out of memory"),
    ("READONLY You can't write against a read only replica.", "READONLY (read-only: a replica)"),
    ("LOADING Redis is loading the dataset in memory", "LOADING (loading its dataset)"),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", "MASTERDOWN (a replica"),
    ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
     "MISCONF (refusing writes"),
    ("target 127.0.0.1:1: RESTORE failed: NOREPLICAS Not enough good replicas to write.", "NOREPLICAS (short of"),
    ("ERR wrong number of arguments", None),
])
def test_refusal_names_the_cause(reply, said) -> None:
    found = refusal(reply)
    assert (found is None) if said is None else found.startswith(said)


def test_refusing_text_per_side() -> None:
    result = RecopyResult()
    assert refusing_text({"127.0.0.1:2": OOM_REPLY}) == \
        f"127.0.0.1:2 refuses writes: {refusal(OOM_REPLY)}: {OOM_REPLY}"
    assert result.refused == {}
