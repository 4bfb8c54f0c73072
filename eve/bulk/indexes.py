"""Search indexes copied at the start of every bulk copy (issue 23), the way function libraries are
(``eve.bulk.functions``): an index is not a key.

A RediSearch index definition (``FT.CREATE idx ON HASH PREFIX ... SCHEMA ...``) lives beside the
keyspace: SCAN never sees it and DUMP/RESTORE of the documents does not carry it, so a copy of
every key leaves the target with no index and every ``FT.SEARCH`` after the cutover fails.
``copy_indexes`` creates each index of the source on the target (and every mirror target, on
every master of a cluster side) *before* any key arrives, so the target indexes the documents as
they are restored:

    source: FT._LIST, FT.INFO idx (definition)      target: FT.INFO idx (is it there? the same?)
            FT.SYNDUMP idx (synonym groups)                 FT.CREATE idx <definition rebuilt>
                                                            FT.SYNUPDATE idx group term...
                                                            FT.ALIASADD alias idx (aliases named)

The definition is rebuilt from ``FT.INFO``: key type, prefixes, filter, language and language
field, default score, score and payload fields, index options (NOOFFSETS, NOFREQS, NOHL,
NOFIELDS, MAXTEXTFIELDS), stop words, and every attribute with its options (WEIGHT, SORTABLE,
UNF, NOSTEM, NOINDEX, SEPARATOR, CASESENSITIVE, WITHSUFFIXTRIE, INDEXEMPTY, INDEXMISSING,
vector algorithm and parameters, geoshape coordinate system). What ``FT.INFO`` does not report
cannot be copied: ``PHONETIC`` matchers, ``TEMPORARY`` and ``SKIPINITIALSCAN`` (RediSearch 2.10).

RediSearch has no command that lists aliases (``FT.INFO`` names none), so the aliases copied
are those the caller names (``aliases``); an interlay in a live run sends ``FT.ALIASADD``/
``UPDATE``/``DEL`` to every side (``proxy.routing``).

An index of the same name already on the target with the same definition is left as it is
(synonyms are still added: ``FT.SYNUPDATE`` only adds). One with another definition is a
conflict, decided by the conflict policy (DESIGN.md 4.4):

- ``REPLACE``: the target's index is dropped (``FT.DROPINDEX`` without ``DD``: its documents
  stay) and the source's created;
- ``NONE`` and ``MERGE`` (an index has no merge semantics): the target's is kept, and the name
  is listed in ``IndexesCopy.conflicts``.

A source without RediSearch (``FT._LIST`` unknown) has nothing to copy. A target without it,
when the source has indexes, gets none: ``IndexesCopy.lost`` names them and ``reason`` says
why (compatibility reports it first as ``MODULES_DIFFER``; an operator who acknowledged it gets
everything else copied). ``compare_indexes`` is Verify's side: definitions and document counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eve.core.endpoints import ConnectionSpec
from eve.core.enums import ConflictPolicy
from eve.core.errors import EndpointError, SourceError, TargetError
from eve.redis.cluster import ClientOptions, ClusterClient
from eve.redis.wire import ReplyError

__all__ = ["IndexDifference", "IndexesCopy", "SearchIndex", "compare_indexes", "copy_indexes", "create_args",
           "read_indexes"]

log = logging.getLogger("eve.bulk.indexes")

_OPTIONS = ClientOptions(timeout=30.0, reconnect_seconds=0, client_name="eve-indexes")

# FT.INFO's index_options that FT.CREATE takes as flags (NOHL is implied by NOOFFSETS, harmless twice).
_INDEX_FLAGS = ("NOOFFSETS", "NOHL", "NOFIELDS", "NOFREQS", "MAXTEXTFIELDS")
# Definition fields of FT.INFO -> the FT.CREATE option that sets each (ON, PREFIX, STOPWORDS apart).
_DEFINITION_OPTIONS = (("filter", "FILTER"), ("default_language", "LANGUAGE"), ("language_field", "LANGUAGE_FIELD"),
                       ("default_score", "SCORE"), ("score_field", "SCORE_FIELD"), ("payload_field", "PAYLOAD_FIELD"))
# Vector attribute parameters as FT.INFO names them -> FT.CREATE's names.
_VECTOR_PARAMS = {"data_type": "TYPE", "dim": "DIM", "distance_metric": "DISTANCE_METRIC", "m": "M",
                  "ef_construction": "EF_CONSTRUCTION", "ef_runtime": "EF_RUNTIME", "epsilon": "EPSILON",
                  "initial_cap": "INITIAL_CAP", "block_size": "BLOCK_SIZE"}


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _pairs(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {_text(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {_text(value[i]): value[i + 1] for i in range(0, len(value) - 1, 2)}
    return {}


def _number(value: Any) -> str:
    """FT.INFO's numbers as FT.CREATE takes them: "2" for 2.0, "0.5" as is."""
    text = _text(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


@dataclass(frozen=True)
class SearchIndex:
    """One index of one node: its name, ``FT.CREATE``'s arguments after the name, synonym groups
    (group id -> terms), and document count (``num_docs``, with ``indexing`` still under way)."""

    name: bytes
    definition: tuple[str, ...]
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    num_docs: int = field(default=0, compare=False)
    indexing: bool = field(default=False, compare=False)

    @property
    def label(self) -> str:
        return self.name.decode("utf-8", "replace")


def create_args(info: Any) -> tuple[str, ...]:
    """``FT.CREATE``'s arguments after the index name, rebuilt from an ``FT.INFO`` reply."""
    fields = _pairs(info)
    definition = _pairs(fields.get("index_definition"))
    args: list[str] = ["ON", _text(definition.get("key_type", b"HASH"))]
    prefixes = [_text(prefix) for prefix in definition.get("prefixes") or []]
    if prefixes and prefixes != [""]:
        args += ["PREFIX", str(len(prefixes)), *prefixes]
    for name, option in _DEFINITION_OPTIONS:
        value = definition.get(name)
        if value is None or _text(value) == "":
            continue
        if name == "default_score":
            if float(_text(value)) == 1.0:
                continue
            args += [option, _number(value)]
        elif name == "default_language" and _text(value).lower() == "english":
            continue
        else:
            args += [option, _text(value)]
    options = {_text(flag).upper() for flag in fields.get("index_options") or []}
    args += [flag for flag in _INDEX_FLAGS if flag in options]
    stopwords = fields.get("stopwords_list")
    if stopwords is not None:
        args += ["STOPWORDS", str(len(stopwords)), *sorted(_text(word) for word in stopwords)]
    args.append("SCHEMA")
    for attribute in fields.get("attributes") or []:
        args += _attribute_args(attribute)
    return tuple(args)


def _attribute_args(attribute: Any) -> list[str]:
    """``identifier AS attribute TYPE options...`` of one FT.INFO attribute (a flat list:
    name/value pairs for identifier, attribute, type and vector parameters; bare flags and
    ``WEIGHT``/``SEPARATOR`` with a value for the rest)."""
    items = [_text(item) for item in attribute]
    identifier = attribute_name = kind = ""
    options: list[str] = []
    vector: list[tuple[str, str]] = []
    algorithm = ""
    i = 0
    while i < len(items):
        word = items[i]
        lower = word.lower()
        value = items[i + 1] if i + 1 < len(items) else ""
        if lower in ("identifier", "attribute", "type", "algorithm", "coord_system") or lower in _VECTOR_PARAMS:
            if lower == "identifier":
                identifier = value
            elif lower == "attribute":
                attribute_name = value
            elif lower == "type":
                kind = value.upper()
            elif lower == "algorithm":
                algorithm = value.upper()
            elif lower == "coord_system":
                options.append(value.upper())
            else:
                vector.append((_VECTOR_PARAMS[lower], value))
            i += 2
        elif word.upper() == "WEIGHT":
            options += ["WEIGHT", _number(value)]
            i += 2
        elif word.upper() == "SEPARATOR":
            if value:   # JSON tags have no separator: FT.INFO shows an empty one
                options += ["SEPARATOR", value]
            i += 2
        else:
            options.append(word.upper())
            i += 1
    head = [identifier] + (["AS", attribute_name] if attribute_name and attribute_name != identifier else [])
    if kind == "VECTOR":
        params = [part for pair in vector for part in pair]
        return head + ["VECTOR", algorithm, str(len(params)), *params, *options]
    return head + [kind, *options]


def read_indexes(side: ClusterClient, address: str, role: str = "source",
                 error: type[EndpointError] = SourceError) -> dict[bytes, SearchIndex] | None:
    """Every index of one node by name; None when the node has no RediSearch, or its user may not
    list indexes (NOPERM: logged, as for a node without them)."""
    names = side.call(address, "FT._LIST")
    if isinstance(names, ReplyError):
        if "unknown" in str(names).lower():
            return None
        if str(names).startswith("NOPERM"):
            log.warning("the %s %s does not let Eve list search indexes (%s): none are compared or copied there",
                        role, address, names)
            return None
        raise error(f"FT._LIST refused by the {role} {address}: {names}")
    indexes: dict[bytes, SearchIndex] = {}
    for name in names:
        index = _read_index(side, address, bytes(name), role, error)
        if index is not None:
            indexes[index.name] = index
    return indexes


def _read_index(side: ClusterClient, address: str, name: bytes, role: str,
                error: type[EndpointError]) -> SearchIndex | None:
    info = side.call(address, "FT.INFO", name)
    if isinstance(info, ReplyError):
        if "unknown index" in str(info).lower() or "no such index" in str(info).lower():
            return None
        raise error(f"FT.INFO {name.decode(errors='replace')} refused by the {role} {address}: {info}")
    fields = _pairs(info)
    synonyms: dict[str, list[str]] = {}
    dumped = side.call(address, "FT.SYNDUMP", name)
    if not isinstance(dumped, ReplyError):
        for term, groups in _pairs(dumped).items():
            for group in groups:
                synonyms.setdefault(_text(group), []).append(term)
    try:
        num_docs = int(float(_text(fields.get("num_docs", 0))))
        indexing = float(_text(fields.get("percent_indexed", 1))) < 1 or _text(fields.get("indexing", 0)) not in ("0", "")
    except ValueError:
        num_docs, indexing = 0, False
    return SearchIndex(name=name, definition=create_args(info),
                       synonyms={group: tuple(sorted(terms)) for group, terms in synonyms.items()},
                       num_docs=num_docs, indexing=indexing)


@dataclass
class IndexesCopy:
    """What ``copy_indexes`` did, over every target side and master."""

    indexes: tuple[str, ...] = ()           # the source's index names
    created: int = 0                        # (index, target master) pairs created
    unchanged: int = 0                      # already there with the same definition
    conflicts: list[str] = field(default_factory=list)   # "name on address": kept as the target had it
    aliases: int = 0                        # (alias, target master) pairs added
    synonym_groups: int = 0                 # (group, target master) pairs written
    lost: list[str] = field(default_factory=list)        # indexes a target without RediSearch cannot hold
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"indexes": list(self.indexes), "created": self.created, "unchanged": self.unchanged,
                "conflicts": list(self.conflicts), "aliases": self.aliases,
                "synonym_groups": self.synonym_groups, "lost": list(self.lost), "reason": self.reason}


def copy_indexes(source: ConnectionSpec, targets: Sequence[ConnectionSpec],
                 policy: ConflictPolicy = ConflictPolicy.REPLACE, *,
                 aliases: Sequence[tuple[str, str]] = ()) -> IndexesCopy:
    """Create the source's search indexes on each of ``targets`` (the target, then mirror targets)
    under ``policy``; ``aliases`` are (alias, index) pairs to add too. See the module docstring."""
    with ClusterClient(source, role="source", error=SourceError, options=_OPTIONS) as side:
        side.connect()
        indexes = read_indexes(side, side.nodes[0])
    if indexes is None:
        return IndexesCopy(reason=f"the source {source.address} lists no search index (no search module, or "
                                  "FT._LIST not allowed): no index to copy")
    report = IndexesCopy(indexes=tuple(sorted(index.label for index in indexes.values())))
    if not indexes:
        return report
    for spec in targets:
        with ClusterClient(spec, role="target", error=TargetError, options=_OPTIONS) as side:
            side.connect()
            for address in side.nodes:
                _write_node(side, address, indexes, policy, aliases, report)
    log.info("search indexes %s: %d created, %d unchanged, %d conflicts (kept the target's), %d lost",
             ", ".join(report.indexes), report.created, report.unchanged, len(report.conflicts), len(report.lost))
    return report


def _write_node(side: ClusterClient, address: str, indexes: dict[bytes, SearchIndex], policy: ConflictPolicy,
                aliases: Sequence[tuple[str, str]], report: IndexesCopy) -> None:
    present = read_indexes(side, address, "target", TargetError)
    if present is None:
        report.lost += [f"{index.label} on {address}" for index in indexes.values()]
        report.reason = (f"the target {address} has no search module (or does not allow FT._LIST): the "
                         f"source's search indexes ({', '.join(report.indexes)}) are not created there")
        log.warning("%s", report.reason)
        return
    for name, index in indexes.items():
        there = present.get(name)
        if there is not None and there.definition == index.definition:
            report.unchanged += 1
        elif there is not None and policy is not ConflictPolicy.REPLACE:
            report.conflicts.append(f"{index.label} on {address}")
            continue
        else:
            if there is not None:
                _call(side, address, "FT.DROPINDEX", name)   # without DD: the documents stay
            _call(side, address, "FT.CREATE", name, *index.definition)
            report.created += 1
        for group, terms in sorted(index.synonyms.items()):
            _call(side, address, "FT.SYNUPDATE", name, group, "SKIPINITIALSCAN", *terms)
            report.synonym_groups += 1
    for alias, index_name in aliases:
        reply = side.call(address, "FT.ALIASUPDATE", alias, index_name)
        if isinstance(reply, ReplyError):
            raise TargetError(f"FT.ALIASUPDATE {alias} {index_name} refused by the target {address}: {reply}")
        report.aliases += 1


def _call(side: ClusterClient, address: str, *args: Any) -> Any:
    reply = side.call(address, *args)
    if isinstance(reply, ReplyError):
        name = _text(args[1]) if len(args) > 1 else ""
        raise TargetError(f"{args[0]} {name} refused by the target {address}: {reply}")
    return reply


# -- Verify ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexDifference:
    """One index that differs between the source and a target: ``kind`` is ``missing`` (not on
    the target), ``extra`` (on the target only), ``definition`` or ``num_docs``."""

    index: str
    kind: str
    source: str
    target: str

    def __str__(self) -> str:
        return f"search index {self.index}: {self.kind} differs (source {self.source}, target {self.target})" \
            if self.kind in ("definition", "num_docs") else f"search index {self.index}: {self.kind}"


def compare_indexes(source: ConnectionSpec, target: ConnectionSpec, *, counts: bool = True,
                    wait_seconds: float = 30.0) -> list[IndexDifference]:
    """Index definitions and (with ``counts``) document counts of the source and the target (first
    masters), each count read once both sides finished indexing (waiting up to ``wait_seconds``).
    Empty when neither side has RediSearch, or every index is the same."""
    deadline = time.monotonic() + wait_seconds
    with ClusterClient(source, role="source", error=SourceError, options=_OPTIONS) as src, \
            ClusterClient(target, role="target", error=TargetError, options=_OPTIONS) as dst:
        src.connect()
        dst.connect()
        while True:
            ours = read_indexes(src, src.nodes[0]) or {}
            theirs = read_indexes(dst, dst.nodes[0], "target", TargetError) or {}
            busy = counts and any(index.indexing for index in (*ours.values(), *theirs.values()))
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    differences: list[IndexDifference] = []
    for name in sorted(set(ours) | set(theirs)):
        label = name.decode("utf-8", "replace")
        mine, other = ours.get(name), theirs.get(name)
        if other is None:
            differences.append(IndexDifference(label, "missing", " ".join(mine.definition) if mine else "", ""))
        elif mine is None:
            differences.append(IndexDifference(label, "extra", "", " ".join(other.definition)))
        elif mine.definition != other.definition:
            differences.append(IndexDifference(label, "definition", " ".join(mine.definition),
                                               " ".join(other.definition)))
        elif counts and mine.num_docs != other.num_docs:
            differences.append(IndexDifference(label, "num_docs", str(mine.num_docs), str(other.num_docs)))
    return differences
