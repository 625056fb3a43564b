"""Identity stitching: identify / alias link, anonymize resets, user_key and device_id."""

from __future__ import annotations

from pipeline.identity import resolve

ANON = frozenset({"anonymize", "reset"})


def test_identify_links_later_events(raw):
    st: dict = {}
    assert resolve(st, raw(), ANON).user_key == "dev1"
    ident = resolve(st, raw(type="identify", event=None, user_id="u1"), ANON)
    assert ident.user_key == "u1" and ident.device_id == "dev1"
    later = resolve(st, raw(), ANON)
    assert later.user_id == "u1" and later.user_key == "u1" and later.device_id == "dev1"


def test_alias_links(raw):
    st: dict = {}
    resolve(st, raw(type="alias", event=None, user_id="u9", previous_id="dev1"), ANON)
    assert resolve(st, raw(), ANON).user_id == "u9"


def test_anonymize_starts_a_fresh_identity(raw):
    st: dict = {}
    resolve(st, raw(type="identify", event=None, user_id="u1"), ANON)
    reset = resolve(st, raw(event="anonymize"), ANON)
    assert reset.user_id is None and reset.user_key == "dev1#1"
    assert resolve(st, raw(), ANON).user_key == "dev1#1"
    assert resolve(st, raw(type="identify", event=None, user_id="u2"), ANON).user_key == "u2"


def test_user_only_device(raw):
    ident = resolve({}, raw(anonymous_id=None, user_id="u5"), ANON)
    assert ident.user_key == "u5" and ident.device_id == "u5"
