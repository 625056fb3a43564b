"""Dedupe rules: message_id (24 h) and identical content (10 s), windows configurable."""

from __future__ import annotations

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


def test_content_window_at_9_9_and_10_1_seconds():
    recent: dict = {}
    assert dedupe.check_content(recent, "d", T0, (0, 1), 10_000) is None
    assert dedupe.check_content(recent, "d", T0 + 9_900, (0, 2), 10_000) is Reason.DUPLICATE_CONTENT
    assert dedupe.check_content(recent, "d", T0 + 10_100, (0, 3), 10_000) is None


def test_content_state_expires_with_the_window():
    recent: dict = {}
    dedupe.check_content(recent, "a", T0, (0, 1), 10_000)
    dedupe.check_content(recent, "b", T0 + 20_000, (0, 2), 10_000)
    assert set(recent) == {"b"}


def test_digest_is_canonical_and_covers_name_and_device():
    d1 = dedupe.content_digest({"app_id": "a", "event": "x"}, "dev", {"a": 1, "b": [1, 2]}, {})
    d2 = dedupe.content_digest({"app_id": "a", "event": "x"}, "dev", {"b": [1, 2], "a": 1}, {})
    assert d1 == d2
    assert d1 != dedupe.content_digest({"app_id": "a", "event": "y"}, "dev", {"a": 1, "b": [1, 2]}, {})
    assert d1 != dedupe.content_digest({"app_id": "a", "event": "x"}, "dev2", {"a": 1, "b": [1, 2]}, {})


def test_a_late_duplicate_is_caught_after_newer_events_of_the_device():
    recent: dict = {}
    wall = T0 + 999_000
    assert dedupe.check_content(recent, "orig", T0 + 3_000, (0, 1), 10_000, LATE, wall) is None
    # the device's later batches land first: events two days newer (a time-compressed stream)
    assert (
        dedupe.check_content(recent, "other", T0 + 2 * 86_400_000, (0, 2), 10_000, LATE, wall + 1_000) is None
    )
    # then the retried batch, 20 s later, with a same-content event 4 s after the original
    dup = dedupe.check_content(recent, "orig", T0 + 7_000, (0, 3), 10_000, LATE, wall + 20_000)
    assert dup is Reason.DUPLICATE_CONTENT
    # digests out of the window AND recorded longer ago than the lateness bound are pruned
    later = wall + 1_000 + LATE + 1
    assert dedupe.check_content(recent, "x", T0 + 3 * 86_400_000, (0, 4), 10_000, LATE, later) is None
    assert set(recent) == {"x"}


def test_late_digests_are_bounded_per_device_and_the_window_is_kept_whole():
    """A device sending 10 events/s for 10 min kept 6,000 digests (350 KB of state per event)."""
    recent: dict = {}
    wall = T0 + 999_000
    for i in range(6_000):  # 10 events/s, all different, on the device's clock and the wall clock
        assert (
            dedupe.check_content(recent, f"d{i}", T0 + 100 * i, (0, i), 10_000, LATE, wall + 100 * i, 50)
            is None
        )
    newest = T0 + 100 * 5_999
    in_window = [k for k, v in recent.items() if newest - v[0] < 10_000]
    assert len(in_window) == 100  # the whole 10 s window
    assert len(recent) <= 100 + 50 + 8  # + the 50 late ones, + at most 8 pruned late
    # the late ones kept are the most recent: a late duplicate of one still counts
    assert dedupe.check_content(
        recent, "d5880", T0 + 100 * 5_880 + 1, (0, 9_999), 10_000, LATE, wall + 600_000, 50
    ) is (Reason.DUPLICATE_CONTENT)
    assert "d100" not in recent  # long out of the window and beyond the bound


def test_a_digest_in_the_window_is_never_dropped_by_the_bound():
    recent: dict = {}
    for i in range(40):  # 40 events within one second: all in the window, bound 5
        dedupe.check_content(recent, f"d{i}", T0 + 25 * i, (0, i), 10_000, LATE, T0 + 25 * i, 5)
    assert all(
        dedupe.check_content(recent, f"d{i}", T0 + 1_000, (1, i), 10_000, LATE, T0 + 1_000, 5)
        for i in range(40)
    )
