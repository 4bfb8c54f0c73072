"""How an interlay sends one command to a cluster side (``proxy.slots``): the plan
(one slot, split per slot, every master, refused), the split of multi-key commands
and the merge of their replies, without servers. Routing through real clusters is
tests/test_live_cluster.py."""

from __future__ import annotations

import pytest

from eve.redis.topology import key_slot
from proxy.slots import CROSSSLOT, CrossSlot, fails_on_cluster, merge_replies, plan, split_by_slot

pytestmark = pytest.mark.timeout(10)

# Three keys of three different slots, and one more sharing the first one's slot.
A, B, C, A2 = b"{a}1", b"{b}1", b"{c}1", b"{a}2"


def test_the_slots_are_distinct():
    assert len({key_slot(A), key_slot(B), key_slot(C)}) == 3 and key_slot(A) == key_slot(A2)


@pytest.mark.parametrize("args,keys,expected", [
    pytest.param([b"GET", A], [A], ("slot", key_slot(A)), id="one-key"),
    pytest.param([b"MGET", A, A2], [A, A2], ("slot", key_slot(A)), id="one-slot"),
    pytest.param([b"PING"], [], ("slot", None), id="keyless"),
    pytest.param([b"FLUSHALL"], [], ("all", "ok"), id="flushall-everywhere"),
    pytest.param([b"DBSIZE"], [], ("all", "sum"), id="dbsize-summed"),
    pytest.param([b"KEYS", b"*"], [], ("all", "concat"), id="keys-concatenated"),
    pytest.param([b"SUNIONSTORE", A, B], [A, B], ("refuse", CROSSSLOT), id="other-multi-key-refused"),
    pytest.param([b"EVAL", b"return 1", b"2", A, B], [A, B], ("refuse", CROSSSLOT), id="script-refused"),
])
def test_plan(args, keys, expected):
    assert plan(args[0].lower(), args, keys) == expected


def test_msetnx_across_slots_is_refused_saying_why():
    kind, frame = plan(b"msetnx", [b"MSETNX", A, b"1", B, b"2"], [A, B])
    assert kind == "refuse" and frame.startswith(b"-CROSSSLOT ") and b"MSETNX" in frame and frame.endswith(b"\r\n")


def test_split_groups_keys_per_slot_in_first_seen_order():
    assert split_by_slot([b"MGET", A, B, A2, C]) == [
        (key_slot(A), [b"MGET", A, A2], [0, 2]),
        (key_slot(B), [b"MGET", B], [1]),
        (key_slot(C), [b"MGET", C], [3]),
    ]


def test_split_mset_keeps_each_key_with_its_value():
    assert split_by_slot([b"MSET", A, b"1", B, b"2", A2, b"3"]) == [
        (key_slot(A), [b"MSET", A, b"1", A2, b"3"], [0, 2]),
        (key_slot(B), [b"MSET", B, b"2"], [1]),
    ]


def test_plan_of_a_cross_slot_mget_is_its_split():
    args = [b"MGET", A, B]
    assert plan(b"mget", args, [A, B]) == ("split", split_by_slot(args))


def test_mget_replies_merge_in_key_order_nulls_and_resp3_included():
    merged = merge_replies("ordered", [b"*2\r\n$1\r\na\r\n$-1\r\n", b"*1\r\n_\r\n", b"*1\r\n$2\r\ncc\r\n"],
                           [[0, 2], [1], [3]])
    assert merged == b"*4\r\n$1\r\na\r\n_\r\n$-1\r\n$2\r\ncc\r\n"


def test_counts_are_summed_and_ok_is_ok():
    assert merge_replies("sum", [b":2\r\n", b":0\r\n", b":1\r\n"]) == b":3\r\n"
    assert merge_replies("ok", [b"+OK\r\n", b"+OK\r\n"]) == b"+OK\r\n"


def test_keys_of_every_master_are_concatenated():
    assert merge_replies("concat", [b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*1\r\n$1\r\nb\r\n"]) == \
        b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"


@pytest.mark.parametrize("how", ["sum", "ok", "concat", "ordered"])
def test_an_error_of_any_part_is_the_reply(how):
    error = b"-OOM command not allowed\r\n"
    assert merge_replies(how, [b":1\r\n" if how == "sum" else b"*0\r\n", error], [[0], [1]]) == error


def test_cross_slot_counts_commands_whose_keys_span_slots_with_bounded_examples():
    found = CrossSlot()
    found.check(b"MGET", [A, A2])            # one slot
    found.check(b"GET", [A])
    for n in range(10):
        found.check(b"MGET", [A, B, C, b"{d}%d" % n])
    found.check(b"EXEC", [A, B])
    report = dict((name, (count, examples)) for name, count, examples in found.report())
    assert set(report) == {"mget", "exec"} and report["mget"][0] == 10
    assert len(report["mget"][1]) == CrossSlot.MAX_EXAMPLES and report["mget"][1][0] == (A, B, C)
    assert fails_on_cluster("exec") and fails_on_cluster("sunionstore") and not fails_on_cluster("mget")
