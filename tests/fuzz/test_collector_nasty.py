"""Nasty input against a real collector process: never a 5xx, never a crash, memory bounded.

A fixed corpus (deep nesting, huge strings, invalid UTF-8, NaN/Infinity, numbers beyond 64 bits,
duplicate keys, gzip bombs, wrong content types and encodings, broken auth headers) plus a fixed
number of hypothesis cases, sent over real HTTP; then slow clients holding connections open while
a normal client is served; then per-key rate and size limits. Every rejection must carry a clear
status and a JSON body naming the reason. The collector's RSS is read from /proc before and after.

(The mappers are fuzzed in-process by ``tests/unit/collector/test_collector_fuzz.py`` and the
OpenAPI operations by schemathesis in ``tests/integration/collector``; this suite adds the wire.)
"""

from __future__ import annotations

import base64
import gzip
import socket
import threading
import time
import zlib
from typing import Any

import httpx
import orjson
import pytest
from fuzz_support import MAX_REQUEST, RATE_BURST, FuzzCollector, rss_kb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: RSS growth allowed over the whole corpus, hypothesis run and slow-client phase
RSS_BUDGET_KB = 64 * 1024
TRACK = b'{"type":"track","event":"e","userId":"u"}'
BASELINE: dict[str, int] = {}  # RSS after warm-up, for the last test


def _bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    chunk = b"\0" * (1 << 20)
    out = [c.compress(chunk) for _ in range(size >> 20)]
    return b"".join(out) + c.flush()


def corpus() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """``(name, path, body, headers)`` of every nasty request (auth added by the test)."""
    deep = 20_000
    big_int = b'{"type":"track","event":"e","userId":"u","properties":{"n":' + b"9" * 40 + b"}}"
    cases: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("empty body", "/v1/track", b"", {}),
        ("json null", "/v1/track", b"null", {}),
        ("json array", "/v1/track", b"[]", {}),
        ("json string", "/v1/batch", b'"batch"', {}),
        ("deep arrays", "/v1/track", b"[" * deep + b"]" * deep, {}),
        ("deep objects", "/v1/track", b'{"a":' * 3000 + b"1" + b"}" * 3000, {}),
        (
            "deep properties",
            "/v1/track",
            b'{"type":"track","event":"e","userId":"u","properties":' + b'{"a":' * 300 + b"1" + b"}" * 301,
            {},
        ),
        ("deep batch", "/v1/batch", b'{"batch":[' + b"[" * 5000 + b"]" * 5000 + b"]}", {}),
        (
            "huge string value",
            "/v1/track",
            b'{"type":"track","event":"e","userId":"u","properties":{"s":"' + b"x" * 40_000 + b'"}}',
            {},
        ),
        (
            "huge event name",
            "/v1/track",
            b'{"type":"track","userId":"u","event":"' + b"e" * 40_000 + b'"}',
            {},
        ),
        (
            "huge key",
            "/v1/track",
            b'{"type":"track","event":"e","userId":"u","' + b"k" * 40_000 + b'":1}',
            {},
        ),
        ("over the request limit", "/v1/batch", b'{"batch":[' + b",".join([TRACK] * 3000) + b"]}", {}),
        ("too many events", "/v1/batch", b'{"batch":[' + b",".join([b"{}"] * 5000) + b"]}", {}),
        ("invalid utf-8", "/v1/track", b'{"type":"track","event":"\xff\xfe","userId":"u"}', {}),
        ("invalid utf-8 key", "/v1/track", b'{"type":"track","event":"e","userId":"u","\xc3\x28":1}', {}),
        ("lone surrogate", "/v1/track", b'{"type":"track","event":"\\ud800","userId":"u"}', {}),
        ("nul bytes", "/v1/track", b'{"type":"track","event":"a\\u0000b","userId":"u\\u0000"}', {}),
        ("NaN", "/v1/track", b'{"type":"track","event":"e","userId":"u","properties":{"v":NaN}}', {}),
        (
            "Infinity",
            "/v1/track",
            b'{"type":"track","event":"e","userId":"u","properties":{"v":Infinity}}',
            {},
        ),
        (
            "-Infinity revenue",
            "/v1/track",
            b'{"type":"track","event":"e","userId":"u","properties":{"revenue":-Infinity}}',
            {},
        ),
        (
            "1e999 revenue",
            "/v1/track",
            b'{"type":"track","event":"e","userId":"u","properties":{"revenue":1e999}}',
            {},
        ),
        ("int beyond 64 bits", "/v1/track", big_int, {}),
        (
            "int beyond 64 bits as id",
            "/v1/track",
            b'{"type":"track","event":"e","userId":' + b"1" * 30 + b"}",
            {},
        ),
        (
            "negative 2^64",
            "/v1/track",
            b'{"type":"track","event":"e","userId":"u","properties":{"n":-18446744073709551616}}',
            {},
        ),
        (
            "duplicate keys",
            "/v1/track",
            b'{"type":"track","event":"a","event":"b","userId":"u","userId":7}',
            {},
        ),
        ("duplicate type", "/v1/track", b'{"type":"track","type":"nonsense","event":"e","userId":"u"}', {}),
        ("gzip bomb", "/v1/track", _bomb(64 << 20), {"Content-Encoding": "gzip"}),
        (
            "gzip bomb batch",
            "/v1/batch",
            gzip.compress(b'{"batch":[' + b" " * (8 << 20) + b"]}"),
            {"Content-Encoding": "gzip"},
        ),
        ("truncated gzip", "/v1/track", gzip.compress(TRACK)[:-8], {"Content-Encoding": "gzip"}),
        ("gzip claimed, plain sent", "/v1/track", TRACK, {"Content-Encoding": "gzip"}),
        ("brotli", "/v1/track", TRACK, {"Content-Encoding": "br"}),
        (
            "stacked encodings",
            "/v1/track",
            gzip.compress(gzip.compress(TRACK)),
            {"Content-Encoding": "gzip, gzip"},
        ),
        ("text/plain", "/v1/track", TRACK, {"Content-Type": "text/plain"}),
        (
            "form encoded",
            "/v1/track",
            b"type=track&event=e&userId=u",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        (
            "multipart",
            "/v1/track",
            b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
        ("xml", "/v1/track", b"<event><type>track</type></event>", {"Content-Type": "application/xml"}),
        ("lying content-length", "/v1/track", TRACK, {"Content-Length-Override": "999999999"}),
        ("app-tracking garbage", "/v1/app-tracking", b'{"events":[{"action":[1,2],"uuid":{"x":1}}]}', {}),
        ("appsflyer wrong app", "/inappevent/someone-else", b'{"eventName":"x","appsflyer_id":"a"}', {}),
        (
            "appsflyer nested",
            "/inappevent/fuzz",
            b'{"eventName":{"a":1},"eventValue":"{\\"x\\":' + b"[" * 2000 + b"]" * 2000 + b'}"}',
            {},
        ),
    ]
    return cases


def _check(name: str, r: httpx.Response) -> None:
    assert r.status_code < 500, f"{name}: {r.status_code} {r.text[:300]}"
    if r.status_code == 200:
        assert r.json() == {"success": True}, name
        return
    body = r.json()
    err = body["errors"][0]
    assert body["success"] is False and err["reason"] and err["message"], (name, body)


def _raw_post(col: FuzzCollector, path: str, body: bytes, length: int) -> httpx.Response:
    """POST over a bare socket, declaring ``length`` bytes whatever is sent (httpx refuses to lie)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Write-Key: {col.key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", col.port), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _clen(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    return httpx.Response(int(status_line.split()[1]), content=content)


def _clen(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


def _send(
    c: httpx.Client, col: FuzzCollector, name: str, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    headers = dict(headers)
    if headers.pop("Content-Length-Override", None):
        # a declared length far beyond the limit is refused before any body is read
        return _raw_post(col, path, body, 999_999_999)
    if path.startswith("/inappevent/"):
        headers["authentication"] = col.key
    else:
        headers["X-Write-Key"] = col.key
    return c.post(path, content=body, headers=headers)


def test_nasty_corpus_gets_clear_4xx_or_200_and_memory_stays_bounded(fuzz_collector: FuzzCollector) -> None:
    col = fuzz_collector
    with httpx.Client(base_url=col.url, timeout=30) as c:
        for _ in range(20):  # warm up allocators and caches before the baseline
            assert c.post("/v1/track", content=TRACK, headers={"X-Write-Key": col.key}).status_code == 200
        time.sleep(0.5)
        before = BASELINE["rss_kb"] = rss_kb(col.pid)
        statuses: dict[str, int] = {}
        for _round in range(5):
            for name, path, body, headers in corpus():
                r = _send(c, col, name, path, body, headers)
                _check(name, r)
                statuses[name] = r.status_code
                time.sleep(0.005)  # stay under the per-key rate limit
        after = rss_kb(col.pid)
    assert col.alive()
    print(f"collector RSS: before {before} kB, after 5 x {len(statuses)} nasty requests {after} kB")
    assert after - before < RSS_BUDGET_KB
    # the rejections a user would look for, with the status a client can act on
    expected = {
        "deep arrays": 400,
        "NaN": 400,
        "Infinity": 400,
        "invalid utf-8": 400,
        "over the request limit": 413,
        "gzip bomb": 413,
        "gzip bomb batch": 413,
        "brotli": 415,
        "truncated gzip": 400,
        "huge string value": 413,
        "lying content-length": 413,
        "appsflyer wrong app": 403,
        "empty body": 400,
    }
    assert {k: statuses[k] for k in expected} == expected
    assert statuses["duplicate keys"] in (200, 400) and statuses["text/plain"] == 200


def test_auth_header_abuse_is_401_not_5xx(fuzz_collector: FuzzCollector) -> None:
    col = fuzz_collector
    bad = [
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
        "Basic " + base64.b64encode(b":" * 10_000).decode(),
        "Bearer " + "x" * 6000,
        "Basic =",
        "Digest x",
    ]
    with httpx.Client(base_url=col.url, timeout=30) as c:
        for h in bad:
            r = c.post("/v1/track", content=TRACK, headers={"Authorization": h})
            assert r.status_code == 401 and r.json()["errors"][0]["reason"] == "unauthorized", h
        r = c.post("/v1/track", content=TRACK, headers={"X-Write-Key": col.key[:-1]})
        assert r.status_code == 401
        # a body key that is not a string
        r = c.post("/v1/track", content=b'{"writeKey":{"$ne":null},"type":"track","event":"e","userId":"u"}')
        assert r.status_code == 401
    assert col.alive()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "event",
                    "userId",
                    "anonymousId",
                    "properties",
                    "context",
                    "batch",
                    "timestamp",
                    "messageId",
                    "traits",
                    "sentAt",
                    "x",
                ]
            )
            | st.text(max_size=8),
            inner,
            max_size=6,
        )
    ),
    max_leaves=40,
)


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.binary(max_size=2000)
    | json_values.map(
        lambda v: orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) if _dumpable(v) else b"{}"
    ),
    path=st.sampled_from(
        [
            "/v1/track",
            "/v1/identify",
            "/v1/batch",
            "/v1/page",
            "/v1/alias",
            "/v1/app-tracking",
            "/inappevent/fuzz",
        ]
    ),
    ctype=st.sampled_from([None, "application/json", "text/plain", "application/octet-stream", "bogus/\x7f"]),
    encoding=st.sampled_from([None, "identity", "gzip", "deflate", "compress"]),
    compress=st.booleans(),
)
def test_random_requests_never_get_a_5xx(
    fuzz_collector: FuzzCollector,
    body: bytes,
    path: str,
    ctype: str | None,
    encoding: str | None,
    compress: bool,
) -> None:
    col = fuzz_collector
    headers: dict[str, str] = {"X-Write-Key": col.key, "authentication": col.key}
    if ctype and ctype.isprintable():
        headers["Content-Type"] = ctype
    if encoding:
        headers["Content-Encoding"] = encoding
        if compress and encoding == "gzip":
            body = gzip.compress(body)
        elif compress and encoding == "deflate":
            body = zlib.compress(body)
    r = httpx.post(col.url + path, content=body, headers=headers, timeout=30)
    if r.status_code == 429:  # the per-key limit is part of the contract too
        assert r.headers["Retry-After"].isdigit()
        time.sleep(int(r.headers["Retry-After"]))
        return
    _check(repr(body[:80]), r)


def _dumpable(v: Any) -> bool:
    try:
        orjson.dumps(v)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


def _slow_client(port: int, stop: threading.Event, body_first: bool) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = (
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n"
        )
        if body_first:
            s.sendall(head + b"\r\n")
            payload = b" " * 4000
        else:
            payload = head
        for i in range(len(payload)):
            if stop.is_set():
                return
            try:
                s.sendall(payload[i : i + 1])
            except OSError:
                return  # the server hung up on us: fine
            time.sleep(0.05)


def test_slow_clients_do_not_starve_others(fuzz_collector: FuzzCollector) -> None:
    col = fuzz_collector
    stop = threading.Event()
    threads = [
        threading.Thread(target=_slow_client, args=(col.port, stop, i % 2 == 0), daemon=True)
        for i in range(60)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        latencies = []
        with httpx.Client(base_url=col.url, timeout=10) as c:
            for _ in range(20):
                t0 = time.perf_counter()
                r = c.post("/v1/track", content=TRACK, headers={"X-Write-Key": col.other_key})
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200
        latencies.sort()
        print(f"with 60 slow clients: p50 {latencies[10] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        assert latencies[10] < 0.5
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert col.alive()


def test_rate_and_size_limits_are_per_key(fuzz_collector: FuzzCollector) -> None:
    col = fuzz_collector
    time.sleep(RATE_BURST / 200 + 0.5)  # let both buckets refill
    small = b'{"type":"track","event":"e","userId":"u"}'
    full = b'{"batch":[' + b",".join([small] * RATE_BURST) + b"]}"
    assert len(full) < MAX_REQUEST
    with httpx.Client(base_url=col.url, timeout=30) as c:
        assert c.post("/v1/batch", content=full, headers={"X-Write-Key": col.key}).status_code == 200
        r = c.post(
            "/v1/batch",
            content=b'{"batch":[' + b",".join([small] * 50) + b"]}",
            headers={"X-Write-Key": col.key},
        )
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["errors"][0]["reason"] == "rate_limited"
        # another key is not affected
        assert c.post("/v1/track", content=small, headers={"X-Write-Key": col.other_key}).status_code == 200
        # size limits answer 413 naming the limit, whatever the key
        big = b'{"batch":[' + b",".join([small] * 2000) + b"]}"
        r = c.post("/v1/batch", content=big, headers={"X-Write-Key": col.other_key})
        assert r.status_code == 413 and str(MAX_REQUEST) in r.json()["errors"][0]["message"]


def test_memory_is_bounded_after_every_phase(fuzz_collector: FuzzCollector) -> None:
    """Runs last: RSS after the corpus, hypothesis, slow clients and limits vs the warm baseline."""
    col = fuzz_collector
    assert col.alive() and "rss_kb" in BASELINE
    now = rss_kb(col.pid)
    print(f"collector RSS: warm baseline {BASELINE['rss_kb']} kB, after every phase {now} kB")
    assert now - BASELINE["rss_kb"] < RSS_BUDGET_KB
    assert "Traceback" not in col.log.read_text(errors="replace")
