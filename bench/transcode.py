#!/usr/bin/env python3
"""Payload transcoding micro-benchmark: CRC-64/REDIS and relabelling on 1 MB payloads, and the
per-payload decision (``TargetFormat.plan``), against copying the same bytes (the baseline,
measured in the same run).

    python bench/transcode.py [--megabytes N] [--rounds N] [--json]

Relabelling a payload copies it once and computes its CRC (``eve.redis.rdb.relabel``); the
ratio ``relabel / copy`` says what that costs beyond the copy every RESTORE pipeline makes of
its payloads anyway. No server is started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eve.redis.rdb import REDIS, TargetFormat, crc64, relabel  # noqa: E402

PAYLOAD_BYTES = 1 << 20
SMALL_PAYLOADS = 100_000
REDIS_70 = TargetFormat(REDIS, "7.0.15", 10)


def _payload(size: int) -> bytes:
    """A Redis 8.2 (RDB 12) string payload of ``size`` bytes of value (its CRC is not checked here)."""
    return b"\x00" + os.urandom(size) + (12).to_bytes(2, "little") + bytes(8)


def _megabytes_per_second(work: Callable[[bytes], object], payload: bytes, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        work(payload)
    return len(payload) * rounds / (time.perf_counter() - started) / 1e6


def _nanoseconds_each(work: Callable[[bytes], object], payloads: list[bytes]) -> float:
    started = time.perf_counter()
    for payload in payloads:
        work(payload)
    return (time.perf_counter() - started) / len(payloads) * 1e9


def run(megabytes: int, rounds: int) -> dict[str, float]:
    payload = _payload(megabytes * PAYLOAD_BYTES)
    small = [_payload(100) for _ in range(SMALL_PAYLOADS)]
    copy = _megabytes_per_second(bytearray, payload, rounds)
    crc = _megabytes_per_second(lambda data: crc64(memoryview(data)[:-8]), payload, rounds)
    relabelled = _megabytes_per_second(lambda data: relabel(data, 10), payload, rounds)
    return {
        "payload_mb": megabytes,
        "copy_mb_per_s": round(copy, 1),
        "crc64_mb_per_s": round(crc, 1),
        "relabel_mb_per_s": round(relabelled, 1),
        "relabel_vs_copy": round(relabelled / copy, 3),
        "plan_ns_per_payload": round(_nanoseconds_each(REDIS_70.plan, small), 1),
        "relabel_ns_per_100_byte_payload": round(_nanoseconds_each(lambda data: relabel(data, 10), small), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/transcode.py", description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1, help="payload size in MB (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=200, help="payloads per measurement (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = parser.parse_args(argv)
    if args.megabytes < 1 or args.rounds < 1:
        parser.error("--megabytes and --rounds must be at least 1")
    results = run(args.megabytes, args.rounds)
    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name:<32} {value:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
