"""TopicHistory against the plain-list History of tests/model.py, and its promises one by one."""

from __future__ import annotations

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from router.core import history as history_module
from router.core.history import (
    ENTRY_OVERHEAD,
    HistoryEntry,
    HistoryLimits,
    HistoryTotal,
    Missing,
    TopicHistory,
    Window,
)
from tests.model import History
from tests.strategies import scaled_examples

LIMITS = st.builds(
    HistoryLimits,
    max_messages=st.integers(1, 6),
    max_bytes=st.integers(1, 60),
    max_age=st.sampled_from([0.5, 1.0, 3.0, 1e9]),
)
_APPEND = st.tuples(st.just("append"), st.integers(0, 24), st.sampled_from([b"", b"\x80"]))
OPERATIONS = st.lists(
    st.one_of(
        _APPEND,
        _APPEND,  # twice as likely as the others: histories fill up to their bounds
        st.tuples(st.just("skip"), st.integers(1, 3)),
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])),
        st.tuples(st.just("expire")),
        st.tuples(st.just("evict")),
        st.tuples(st.just("limits"), LIMITS),
        st.tuples(
            st.just("read"),
            st.integers(-2, 2),
            st.none() | st.integers(-1, 2),
            st.none() | st.integers(1, 90),
        ),
    ),
    max_size=40,
)


def entry(offset: int, size: int = 1, header: bytes = b"") -> HistoryEntry:
    return HistoryEntry(offset, header, bytes([offset % 256]) * size)


def same(real: TopicHistory, model: History) -> None:
    assert (real.start, real.last, real.entries()) == tuple(model.view())
    assert real.bytes == model.size()
    assert len(real) == len(model.kept)


def read_both(real: TopicHistory, model: History, after: int, upto: int | None, budget: int | None) -> None:
    try:
        expected: Window | Missing | type[ValueError] = model.read(after, upto, budget)
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError, match=r"beyond|before"):
            real.read(after, upto, budget)
        return
    got = real.read(after, upto, budget)
    note(f"read({after}, {upto}, {budget}) -> {got}")
    assert got == expected


@settings(max_examples=scaled_examples(300), deadline=None)
@given(limits=LIMITS, first=st.integers(0, 5), operations=OPERATIONS)
def test_history_matches_the_list_model(
    limits: HistoryLimits, first: int, operations: list[tuple[object, ...]]
) -> None:
    real, model = TopicHistory(limits, first), History(limits, first, first)
    offset, now = first, 0.0
    for operation in operations:
        note(f"t={now}: {operation}")
        match operation:
            case ("append", int(size), bytes(header)):
                offset += 1
                real.append(entry(offset, size, header), now)
                model.record(entry(offset, size, header), now)
            case ("skip", int(missed)):
                offset += missed
            case ("wait", float(seconds)):
                now += seconds
            case ("expire",):
                real.expire(now)
                model.expire(now)
            case ("evict",) if model.kept:
                real.evict_oldest()
                model.drop_oldest()
            case ("limits", HistoryLimits() as new):
                real.limits = model.limits = new
                real.trim()
                model.trim()
            case ("read", int(back), (int() | None) as upto, (int() | None) as budget):
                after = real.start + back
                read_both(real, model, after, None if upto is None else after + upto, budget)
        same(real, model)
        assert len(real) <= real.limits.max_messages
        assert real.bytes <= real.limits.max_bytes


@given(
    limits=LIMITS,
    sizes=st.lists(st.integers(0, 20), min_size=1, max_size=20),
    data=st.data(),
)
def test_a_read_is_everything_after_the_offset_or_missing(
    limits: HistoryLimits, sizes: list[int], data: st.DataObject
) -> None:
    """No partial answers: every message after ``after`` up to the newest, or Missing(start)."""
    history = TopicHistory(limits, 0)
    for offset, size in enumerate(sizes, start=1):
        history.append(entry(offset, size), 0.0)
    after = data.draw(st.integers(0, history.last), label="after")
    got = history.read(after)
    if after < history.start:
        assert got == Missing(history.start)
    else:
        assert got == Window([entry(o, sizes[o - 1]) for o in range(after + 1, history.last + 1)], False)


def test_a_bounded_read_stops_before_the_budget_but_returns_at_least_one_message() -> None:
    history = TopicHistory(HistoryLimits(10, 1000, 60.0), 0)
    for offset in range(1, 5):
        history.append(entry(offset, 8), 0.0)
    cost = 8 + ENTRY_OVERHEAD
    assert history.read(0, max_bytes=2 * cost) == Window([entry(1, 8), entry(2, 8)], True)
    assert history.read(0, max_bytes=2 * cost - 1) == Window([entry(1, 8)], True)
    assert history.read(0, max_bytes=1) == Window([entry(1, 8)], True)
    assert history.read(2, upto=3, max_bytes=1) == Window([entry(3, 8)], False)
    assert history.read(0, max_bytes=4 * cost) == Window([entry(o, 8) for o in range(1, 5)], False)
    assert history.read(4) == Window([], False)


def test_bounds_evict_the_oldest_and_move_start() -> None:
    history = TopicHistory(HistoryLimits(3, 10, 60.0), 0)
    for offset in range(1, 6):
        history.append(entry(offset, 2), 0.0)
    assert [e.offset for e in history.entries()] == [3, 4, 5]
    assert (history.start, history.last) == (2, 5)
    history.append(entry(6, 8), 0.0)
    assert [e.offset for e in history.entries()] == [5, 6]
    assert history.read(1) == Missing(4)


def test_a_message_is_kept_until_exactly_max_age() -> None:
    history = TopicHistory(HistoryLimits(10, 100, 2.0), 0)
    history.append(entry(1), 1.0)
    history.append(entry(2), 2.0)
    history.expire(3.0)
    assert [e.offset for e in history.entries()] == [1, 2]
    history.expire(3.5)
    assert [e.offset for e in history.entries()] == [2]
    history.append(entry(3), 10.0)
    assert [e.offset for e in history.entries()] == [3]
    assert history.start == 2


def test_a_gap_in_offsets_breaks_the_run() -> None:
    history = TopicHistory(HistoryLimits(10, 100, 60.0), 0)
    history.append(entry(1), 0.0)
    history.append(entry(2), 0.0)
    history.append(entry(5), 0.0)
    assert history.read(0) == Missing(4)
    assert history.read(4) == Window([entry(5)], False)


def test_a_message_over_the_byte_bound_empties_the_history() -> None:
    history = TopicHistory(HistoryLimits(10, 10, 60.0), 0)
    history.append(entry(1, 4), 0.0)
    history.append(entry(2, 11), 0.0)
    assert (history.entries(), history.bytes, history.start, history.last) == ([], 0, 2, 2)
    history.append(entry(3, 4), 0.0)
    assert history.read(2) == Window([entry(3, 4)], False)


def test_a_message_over_max_entry_bytes_is_never_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "MAX_ENTRY_BYTES", 16)
    total = HistoryTotal()
    history = TopicHistory(HistoryLimits(10, 1000, 60.0), 0, total)
    history.append(entry(1, 16), 0.0)
    assert total.bytes == 16
    history.append(entry(2, 17), 0.0)
    assert (history.entries(), total.bytes, history.start) == ([], 0, 2)


def test_histories_share_a_total() -> None:
    total = HistoryTotal()
    a = TopicHistory(HistoryLimits(2, 100, 60.0), 0, total)
    b = TopicHistory(HistoryLimits(2, 100, 60.0), 10, total)
    for offset in range(1, 4):
        a.append(entry(offset, 5, b"h"), 0.0)
    b.append(entry(11, 7), 0.0)
    assert total.bytes == a.bytes + b.bytes == 2 * 6 + 7
    a.evict_oldest()
    b.clear(11)
    assert total.bytes == a.bytes == 6


def test_reads_outside_the_sequence_are_errors() -> None:
    history = TopicHistory(HistoryLimits(10, 100, 60.0), 3)
    history.append(entry(4), 0.0)
    with pytest.raises(ValueError, match="beyond"):
        history.read(5)
    with pytest.raises(ValueError, match="before"):
        history.read(4, upto=3)
    assert history.read(3, upto=99) == Window([entry(4)], False)
