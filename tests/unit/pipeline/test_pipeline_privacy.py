"""Privacy options and GDPR suppression in the pipeline: nothing a user asked to hide is stored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import privacy
from pipeline.fx import RateTable
from pipeline.process import DictState, Processor
from pipeline.reasons import Reason
from pipeline.settings import PipelineSettings
from trackflow.apps import App
from trackflow.gdpr import SuppressionList

T0 = 1_790_000_000_000
NOW = T0 + 5_000
SALT = b"s3cr3t-salt-value"


def _proc(app: App, rates: RateTable, priv: privacy.Privacy | None = None) -> Processor:
    return Processor(PipelineSettings(), {app.app_id: app}.get, rates, DictState(), priv)


def test_hash_is_keyed_per_app_deterministic_and_not_the_id() -> None:
    h = privacy.hash_user_id(SALT, "a1", "alice@example.com")
    assert h == privacy.hash_user_id(SALT, "a1", "alice@example.com")
    assert h.startswith("h_") and len(h) == 34 and "alice" not in h
    assert h != privacy.hash_user_id(SALT, "a2", "alice@example.com")
    assert h != privacy.hash_user_id(b"other salt", "a1", "alice@example.com")
    assert privacy.is_hashed(h) and privacy.hash_user_id(SALT, "a1", h) == h


@given(st.text(min_size=1, max_size=200))
def test_every_id_hashes_to_the_same_shape(uid: str) -> None:
    h = privacy.hash_user_id(SALT, "app", uid)
    assert privacy.is_hashed(h)


def test_drop_keys_only_touches_listed_top_level_keys() -> None:
    text = orjson.dumps({"email": "a@b.c", "plan": "pro", "nested": {"email": "kept"}}).decode()
    out = orjson.loads(privacy.drop_keys(text, ("email", "phone")))
    assert out == {"plan": "pro", "nested": {"email": "kept"}}
    assert privacy.drop_keys(text, ()) is text
    assert privacy.drop_keys("not json {email", ("email",)) == "not json {email"  # validation reports it


def test_apply_without_salt_refuses_rather_than_store_clear_ids() -> None:
    app = App(app_id="a1", name="A", write_key_hash="x", hash_user_ids=True)
    with pytest.raises(privacy.PrivacyError, match="SALT"):
        privacy.apply({"user_id": "bob"}, app, None)


def test_stored_user_ids_lists_clear_and_hashed_forms() -> None:
    app = App(app_id="a1", name="A", write_key_hash="x", hash_user_ids=True)
    assert privacy.stored_user_ids(app, "bob", SALT) == ["bob", privacy.hash_user_id(SALT, "a1", "bob")]
    with pytest.raises(privacy.PrivacyError):
        privacy.stored_user_ids(app, "bob", None)
    plain = replace(app, hash_user_ids=False)
    assert privacy.stored_user_ids(plain, "bob", None) == ["bob"]


def test_hashed_app_stores_no_clear_user_id_anywhere(raw: Any, rates: RateTable) -> None:
    app = App(app_id="a1", name="A", write_key_hash="x", hash_user_ids=True, drop_properties=("email",))
    proc = _proc(app, rates, privacy.Privacy(salt=SALT))
    r = raw(type="identify", event=None, user_id="alice", properties={"email": "alice@x.io", "plan": "pro"})
    res = proc.process(r, pos=(0, 1), topic="raw", now=NOW)
    assert res.outcome == "enriched"
    rec = res.enriched[0][1]
    hashed = privacy.hash_user_id(SALT, "a1", "alice")
    assert rec["user_id"] == hashed and rec["user_key"] == hashed
    assert orjson.loads(rec["properties"]) == {"plan": "pro"}
    assert "alice" not in orjson.dumps(rec).decode()
    # a later anonymous event of the device is stitched to the hashed id
    later = proc.process(raw(message_id="m2", event="tap"), pos=(0, 2), topic="raw", now=NOW)
    assert later.enriched[0][1]["user_key"] == hashed
    # and a dead letter of that app carries the transformed event too
    bad = proc.process(
        raw(message_id="m3", event="=bad", user_id="alice", properties={"email": "e@x"}),
        pos=(0, 3),
        topic="raw",
        now=NOW,
    )
    assert bad.outcome == Reason.INVALID_EVENT_NAME.value
    payload = bad.invalid[0][1]["payload"]
    assert "alice" not in payload and "e@x" not in payload and hashed in payload


def test_dropped_property_never_reaches_revenue_or_output(raw: Any, rates: RateTable) -> None:
    app = App(app_id="a1", name="A", write_key_hash="x", drop_properties=("revenue", "phone"))
    proc = _proc(app, rates)
    rec = proc.process(raw(properties={"revenue": 5, "phone": "+44 7000", "x": 1}), now=NOW).enriched[0][1]
    assert rec["revenue"] is None and orjson.loads(rec["properties"]) == {"x": 1}


def test_hashing_app_without_salt_dead_letters_with_redacted_payload(raw: Any, rates: RateTable) -> None:
    app = App(app_id="a1", name="A", write_key_hash="x", hash_user_ids=True)
    res = _proc(app, rates).process(raw(user_id="carol", properties={"k": "v"}), now=NOW)
    assert res.outcome == Reason.INTERNAL_ERROR.value and res.enriched == []
    rec = res.invalid[0][1]
    assert rec["stage"] == "privacy" and "SALT" in rec["message"]
    assert "carol" not in rec["payload"] and "dev1" not in rec["payload"]


def test_suppressed_user_is_dead_lettered_by_id_and_by_stitched_device(
    raw: Any, rates: RateTable, tmp_path: Path
) -> None:
    app = App(app_id="a1", name="A", write_key_hash="x")
    sup = SuppressionList(tmp_path / "suppressions.json", refresh_interval=0)
    proc = _proc(app, rates, privacy.Privacy(suppressed=sup.contains))
    # before the delete: dev1 identifies as dave, dev2 is someone else
    assert proc.process(raw(message_id="a", type="identify", event=None, user_id="dave"), now=NOW).enriched
    assert proc.process(raw(message_id="b", anonymous_id="dev2"), now=NOW).enriched
    assert sup.add("a1", ["dave"]) == 1 and sup.add("a1", ["dave"]) == 0
    assert "dave" not in (tmp_path / "suppressions.json").read_text()

    by_id = proc.process(raw(message_id="c", anonymous_id="dev9", user_id="dave"), now=NOW)
    by_device = proc.process(raw(message_id="d", properties={"secret": "x"}), now=NOW)  # dev1, anonymous
    other = proc.process(raw(message_id="e", anonymous_id="dev2", event="other_tap"), now=NOW)
    assert by_id.outcome == by_device.outcome == Reason.SUPPRESSED.value
    assert by_id.enriched == by_device.enriched == []
    for res in (by_id, by_device):
        rec = res.invalid[0][1]
        assert rec["reason"] == "suppressed" and "dave" not in rec["payload"] and "dev" not in rec["payload"]
        assert orjson.loads(rec["payload"])["message_id"] in {"c", "d"}
    assert other.outcome == "enriched"
    assert proc.counters["suppressed"] == 2
    # another app's user with the same id is not suppressed
    assert not sup.contains("a2", "dave")


def test_suppression_list_is_picked_up_by_another_reader(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    reader = SuppressionList(path, refresh_interval=0)
    assert not reader.contains("a1", "u") and len(reader) == 0
    SuppressionList(path).add("a1", ["u", "h_x"])
    assert reader.contains("a1", "u") and reader.count("a1") == 2 and reader.count("a2") == 0
