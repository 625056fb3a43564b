"""Dedupe rules: message_id (24 h) and identical content (10 s), windows configurable."""

from __future__ import annotations

import hashlib
from typing import Any

from pipeline import dedupe
from pipeline.reasons import Reason

T0 = 1_790_000_000_000
LATE = 600_000  # PipelineSettings.content_late_s
H24 = 24 * 3_600_000


def test_message_id_window():
    reason, entry = dedupe.check_message_id(None, T0, (0, 1), H24)
    assert reason is None and entry == [T0 + H24, 0, 1]
    assert dedupe.check_message_id(entry, T0 + H24 - 1, (0, 2), H24)[0] is Reason.DUPLICATE_MESSAGE_ID
    reason, new = dedupe.check_message_id(entry, T0 + H24, (0, 3), H24)  # expired: state is gone
    assert reason is None and new == [T0 + 2 * H24, 0, 3]


def test_replay_of_the_same_record_is_not_a_duplicate():
    _, entry = dedupe.check_message_id(None, T0, (2, 40), H24)
    assert dedupe.check_message_id(entry, T0, (2, 40), H24) == (None, None)


class Recent:
    """A device's ``c`` string, threaded through :func:`dedupe.check_content` like the processor does."""

    def __init__(self) -> None:
        self.c = ""

    def check(self, name: str, *args: object) -> Reason | None:
        reason, self.c = dedupe.check_content(self.c, _d(name), *args)  # type: ignore[arg-type]
        return reason

    def digests(self) -> dict[str, list[int]]:
        return {_names[k]: v for k, v in dedupe.entries(self.c).items()}


_names: dict[str, str] = {}


def _d(name: str) -> str:
    """A 20-hex-digit digest standing for ``name`` (the real ones come from content_digest)."""
    d = hashlib.blake2b(name.encode(), digest_size=10).hexdigest()
    _names[d] = name
    return d


def test_content_window_at_9_9_and_10_1_seconds():
    recent = Recent()
    assert recent.check("d", T0, (0, 1), 10_000) is None
    assert recent.check("d", T0 + 9_900, (0, 2), 10_000) is Reason.DUPLICATE_CONTENT
    assert recent.check("d", T0 + 10_100, (0, 3), 10_000) is None


def test_content_state_expires_with_the_window():
    recent = Recent()
    recent.check("a", T0, (0, 1), 10_000)
    recent.check("b", T0 + 20_000, (0, 2), 10_000)
    assert set(recent.digests()) == {"b"}


def test_a_replay_of_the_record_that_recorded_a_digest_is_not_its_duplicate():
    recent = Recent()
    assert recent.check("d", T0, (3, 41), 10_000) is None
    assert recent.check("d", T0, (3, 41), 10_000) is None  # the same record again
    assert recent.check("d", T0, (3, 42), 10_000) is Reason.DUPLICATE_CONTENT
    assert recent.check("d", T0, dedupe.NO_POSITION, 10_000) is Reason.DUPLICATE_CONTENT


def test_the_digest_string_round_trips_every_field_and_keeps_the_recording_order():
    recent = Recent()
    recent.check("a", -86_400_000, (0, 0), 10_000, LATE, T0)  # an event time before 1970
    recent.check("b", T0, (65_534, 2**47), 10_000, LATE, T0 + 1)
    recent.check("a", T0 + 5, (1, 7), 10_000, LATE, T0 + 2)  # out of its window: recorded again, last
    assert len(recent.c) == 2 * dedupe.ENTRY and recent.c == recent.c.lower()
    assert list(recent.digests().items()) == [
        ("b", [T0, 65_534, 2**47, T0 + 1]),
        ("a", [T0 + 5, 1, 7, T0 + 2]),
    ]


def test_a_digest_is_only_found_where_an_entry_starts():
    # a digest whose hex digits also occur across the fields of another entry
    fields = f"{T0 + dedupe.TIME_BIAS:012x}0001{5:012x}{T0:012x}"
    inside = fields[4:24]
    c = "f" * 20 + fields
    assert c.find(inside) > 0
    reason, new = dedupe.check_content(c, inside, T0, (0, 9), 10_000, LATE, T0)
    assert reason is None and list(dedupe.entries(new)) == ["f" * 20, inside]


def test_a_map_stored_before_the_string_format_is_converted_in_recording_order():
    old = {_d("x"): [T0, 0, 5, T0 + 20], _d("y"): [T0 + 1, 0, 6, T0 + 10], _d("z"): [T0 + 2, 1, 7]}
    c = dedupe.from_map(old)
    assert {_names[k]: v for k, v in dedupe.entries(c).items()} == {
        "z": [T0 + 2, 1, 7, 0],
        "y": [T0 + 1, 0, 6, T0 + 10],
        "x": [T0, 0, 5, T0 + 20],
    }
    assert list(dedupe.entries(c)) == [_d("z"), _d("y"), _d("x")]
    assert (
        dedupe.check_content(c, _d("y"), T0 + 3, (0, 99), 10_000, LATE, T0 + 30)[0]
        is Reason.DUPLICATE_CONTENT
    )


def test_a_state_stored_with_the_old_map_keeps_deduplicating(proc: Any, raw: Any) -> None:
    assert proc.process(raw(properties={"n": 1}), pos=(0, 1), now=T0).outcome == "enriched"
    stored = proc.state.devices["a1:dev1"]
    stored["c"] = dedupe.entries(stored["c"])  # the map devices were stored with before
    again = raw(message_id="m2", properties={"n": 1})
    assert proc.process(again, pos=(0, 2), now=T0 + 1).outcome == Reason.DUPLICATE_CONTENT.value
    other = raw(message_id="m3", properties={"n": 2})
    assert proc.process(other, pos=(0, 3), now=T0 + 2).outcome == "enriched"
    c = proc.state.devices["a1:dev1"]["c"]
    assert isinstance(c, str) and len(dedupe.entries(c)) == 2


def test_digest_is_canonical_and_covers_name_and_device():
    d1 = dedupe.content_digest({"app_id": "a", "event": "x"}, "dev", {"a": 1, "b": [1, 2]}, {})
    d2 = dedupe.content_digest({"app_id": "a", "event": "x"}, "dev", {"b": [1, 2], "a": 1}, {})
    assert d1 == d2
    assert d1 != dedupe.content_digest({"app_id": "a", "event": "y"}, "dev", {"a": 1, "b": [1, 2]}, {})
    assert d1 != dedupe.content_digest({"app_id": "a", "event": "x"}, "dev2", {"a": 1, "b": [1, 2]}, {})


def test_a_late_duplicate_is_caught_after_newer_events_of_the_device():
    recent = Recent()
    wall = T0 + 999_000
    assert recent.check("orig", T0 + 3_000, (0, 1), 10_000, LATE, wall) is None
    # the device's later batches land first: events two days newer (a time-compressed stream)
    assert recent.check("other", T0 + 2 * 86_400_000, (0, 2), 10_000, LATE, wall + 1_000) is None
    # then the retried batch, 20 s later, with a same-content event 4 s after the original
    dup = recent.check("orig", T0 + 7_000, (0, 3), 10_000, LATE, wall + 20_000)
    assert dup is Reason.DUPLICATE_CONTENT
    # digests out of the window AND recorded longer ago than the lateness bound are pruned
    later = wall + 1_000 + LATE + 1
    assert recent.check("x", T0 + 3 * 86_400_000, (0, 4), 10_000, LATE, later) is None
    assert set(recent.digests()) == {"x"}


def test_late_digests_are_bounded_per_device_and_the_window_is_kept_whole():
    """A device sending 10 events/s for 10 min kept 6,000 digests (350 KB of state per event)."""
    recent = Recent()
    wall = T0 + 999_000
    for i in range(6_000):  # 10 events/s, all different, on the device's clock and the wall clock
        assert recent.check(f"d{i}", T0 + 100 * i, (0, i), 10_000, LATE, wall + 100 * i, 50) is None
    newest = T0 + 100 * 5_999
    kept = recent.digests()
    in_window = [k for k, v in kept.items() if newest - v[0] < 10_000]
    assert len(in_window) == 100  # the whole 10 s window
    assert len(kept) <= 100 + 50 + 8  # + the 50 late ones, + at most 8 pruned late
    # the late ones kept are the most recent: a late duplicate of one still counts
    assert recent.check("d5880", T0 + 100 * 5_880 + 1, (0, 9_999), 10_000, LATE, wall + 600_000, 50) is (
        Reason.DUPLICATE_CONTENT
    )
    assert "d100" not in recent.digests()  # long out of the window and beyond the bound


def test_a_digest_in_the_window_is_never_dropped_by_the_bound():
    recent = Recent()
    for i in range(40):  # 40 events within one second: all in the window, bound 5
        recent.check(f"d{i}", T0 + 25 * i, (0, i), 10_000, LATE, T0 + 25 * i, 5)
    assert all(recent.check(f"d{i}", T0 + 1_000, (1, i), 10_000, LATE, T0 + 1_000, 5) for i in range(40))


def test_nothing_is_pruned_while_the_first_recorded_digest_is_within_the_lateness_bound():
    recent = Recent()
    for i in range(30):  # out of each other's window, all recorded within the last 10 min
        recent.check(f"d{i}", T0 + 20_000 * i, (0, i), 10_000, LATE, T0 + i)
    assert len(recent.digests()) == 30
    # once the first recorded passes the bound, the next prune drops it and keeps the rest
    for i in range(30, 34):  # 32 digests: a prune
        recent.check(f"d{i}", T0 + 20_000 * i, (0, i), 10_000, LATE, T0 + LATE)
    assert "d0" not in recent.digests() and "d1" in recent.digests()
