"""One raw event through every stage (pure given a state store).

:class:`Processor` runs validate -> dedupe -> identity -> attribution -> sessions -> FX -> enrich and
returns a :class:`Result` holding the records to produce (enriched events, dead letters, session
records) with their Kafka keys. It never raises for a bad event: any rule violation or unexpected
error becomes a dead letter with a :class:`~pipeline.reasons.Reason`, so every input ends as an
enriched event, a counted duplicate or a dead letter.

State goes through the :class:`StateStore` protocol - two mapping-like stores:

- device state, key ``app_id:device``: identity, attribution, current session, recent content
  digests, and the Kafka position of the last event applied (``p``/``o``); a record of that device
  at or before that position in the same partition is a replay and produces nothing;
- message-id entries, key ``app_id:message_id``: ``[expires_at_ms, partition, offset]``; a record
  at exactly that position again is a replay and produces nothing (see :data:`REPLAYED`).

The position rule needs the caller to process each partition strictly in order (the worker does:
a record past one it has not processed waits for a re-read), so a device state at ``(p, o)`` holds
the effects of every record of partition ``p`` up to ``o``. A replay must not be decided again on
such a state: the state is ahead of it, and a content digest the record was matched against may
since have been replaced by a later identical event (seen in the fault suite: a content duplicate
replayed after a worker SIGKILL was stored).

The worker backs them with Faust tables (RocksDB + compacted changelogs); tests use
:class:`DictState`.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pipeline import dedupe, enrich, identity, privacy, sessions
from pipeline.exceptions import RejectedEvent
from pipeline.fx import RateTable, convert_revenue
from pipeline.privacy import Privacy
from pipeline.reasons import DUPLICATE_REASONS, Reason
from pipeline.settings import PipelineSettings
from pipeline.validate import validate
from schemas import Codec, defaults
from trackflow.apps import App

Record = dict[str, Any]
Keyed = tuple[str, Record]
Position = dedupe.Position
NO_POSITION = dedupe.NO_POSITION


class StateStore(Protocol):
    """The pipeline's state, as two key-value stores of JSON-able values."""

    def get_device(self, key: str) -> dict[str, Any] | None: ...

    def put_device(self, key: str, value: dict[str, Any]) -> None: ...

    def get_seen(self, key: str) -> list[Any] | None: ...

    def put_seen(self, key: str, value: list[Any]) -> None: ...


class DictState:
    """In-memory :class:`StateStore` (tests, benchmarks of the pure path)."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.seen: dict[str, list[Any]] = {}

    def get_device(self, key: str) -> dict[str, Any] | None:
        v = self.devices.get(key)
        return orjson.loads(orjson.dumps(v)) if v is not None else None

    def put_device(self, key: str, value: dict[str, Any]) -> None:
        self.devices[key] = value

    def get_seen(self, key: str) -> list[Any] | None:
        return self.seen.get(key)

    def put_seen(self, key: str, value: list[Any]) -> None:
        self.seen[key] = value


@dataclass(slots=True)
class Result:
    """What one raw event produced."""

    outcome: str  # "enriched", or the Reason value that stopped it
    enriched: list[Keyed] = field(default_factory=list)
    invalid: list[Keyed] = field(default_factory=list)
    sessions: list[Keyed] = field(default_factory=list)
    device_key: str | None = None
    session_open: bool = False
    session_deadline: int = 0  # wall-clock ms after which the open session counts as idle
    seen_key: str | None = None
    seen_expires: int | None = None
    clock: int = 0  # received_at of the event: the clock of the message-id window


#: outcome of a record whose effects the stored state already holds (nothing produced)
REPLAYED = "replayed"

_ENRICHED_DEFAULTS: Record = defaults("enriched_event")
_NO_PRIVACY = Privacy()
_SUPPRESSED_MSG = "the user was deleted (trackflow gdpr delete): event dropped, payload withheld"


class Processor:
    """Runs the stages over decoded RawEvents.

    Parameters:
        settings: the pipeline settings.
        apps: looks an app up by id (``AppRegistry.get``); None means unknown.
        rates: the FX rate table, kept current by the worker.
        state: where device and message-id state lives.
        privacy: the user-id salt and the GDPR suppression lookup (:mod:`pipeline.privacy`);
            None: no salt, nothing suppressed.
    """

    def __init__(
        self,
        settings: PipelineSettings,
        apps: Callable[[str], App | None],
        rates: RateTable,
        state: StateStore,
        privacy: Privacy | None = None,
    ) -> None:
        self.settings = settings
        self.apps = apps
        self.rates = rates
        self.state = state
        self.privacy = privacy or _NO_PRIVACY
        self.counters: Counter[str] = Counter()
        self._mid_window = int(settings.message_id_window_s * 1000)
        self._content_window = int(settings.content_window_s * 1000)
        self._content_late = int(settings.content_late_s * 1000)
        self._content_late_max = settings.content_late_max
        # (context JSON text, user agent) -> the typed context columns (read-only, copied into rec)
        self._context_cache: dict[tuple[Any, Any], dict[str, str | None]] = {}

    # -- dead letters ----------------------------------------------------------------------------

    def dead_letter(
        self,
        raw: Record | None,
        reason: Reason,
        message: str,
        *,
        stage: str,
        fld: str | None = None,
        pos: Position = NO_POSITION,
        topic: str | None = None,
        now: int,
        payload: bytes | None = None,
    ) -> Keyed:
        """An ``InvalidEvent`` record and its key; counts the reason."""
        self.counters[reason.value] += 1
        raw = raw or {}
        app_id = str(raw.get("app_id") or "")
        device = raw.get("anonymous_id") or raw.get("user_id") or ""
        if payload is not None:
            text = base64.b64encode(payload).decode()
        else:
            text = orjson.dumps(raw, default=str).decode()
        rec = {
            "app_id": app_id,
            "message_id": str(raw.get("message_id") or ""),
            "stage": stage,
            "reason": reason.value,
            "message": message,
            "field": fld,
            "payload": text,
            "received_at": int(raw.get("received_at") or now),
            "failed_at": now,
            "source_topic": topic,
            "source_partition": pos[0] if pos != NO_POSITION else None,
            "source_offset": pos[1] if pos != NO_POSITION else None,
        }
        return f"{app_id}:{device}", rec

    def undecodable(self, data: bytes, error: str, *, pos: Position, topic: str | None, now: int) -> Result:
        """The result for a Kafka record that is not a RawEvent."""
        dl = self.dead_letter(
            None,
            Reason.UNDECODABLE,
            f"cannot decode RawEvent: {error}",
            stage="decode",
            pos=pos,
            topic=topic,
            now=now,
            payload=data,
        )
        return Result(Reason.UNDECODABLE.value, invalid=[dl])

    def process_bytes(self, codec: Codec, data: bytes, *, pos: Position, topic: str, now: int) -> Result:
        """Decode one Kafka value with ``codec`` and :meth:`process` it."""
        try:
            raw = codec.decode(data, topic)
        except Exception as exc:  # any decoding failure is a dead letter, never a crash
            return self.undecodable(data, str(exc), pos=pos, topic=topic, now=now)
        return self.process(raw, pos=pos, topic=topic, now=now)

    # -- the stages ------------------------------------------------------------------------------

    def process(
        self, raw: Record, *, pos: Position = NO_POSITION, topic: str | None = None, now: int
    ) -> Result:
        """Run one decoded RawEvent through every stage. Never raises for a bad event."""
        self.counters["in"] += 1
        stage = "validate"
        try:
            app = self.apps(str(raw.get("app_id")))
            if app is None:
                dl = self.dead_letter(
                    raw,
                    Reason.UNKNOWN_APP,
                    f"app_id {raw.get('app_id')!r} is not registered",
                    stage=stage,
                    fld="app_id",
                    pos=pos,
                    topic=topic,
                    now=now,
                )
                return Result(Reason.UNKNOWN_APP.value, invalid=[dl])
            stage = "privacy"
            try:
                raw = privacy.apply(raw, app, self.privacy.salt)
            except privacy.PrivacyError as exc:
                return self._withheld(raw, Reason.INTERNAL_ERROR, str(exc), stage, pos, topic, now)
            uid = raw.get("user_id")
            if uid and self.privacy.suppressed(app.app_id, uid):
                return self._withheld(raw, Reason.SUPPRESSED, _SUPPRESSED_MSG, stage, pos, topic, now)
            stage = "validate"
            try:
                ev = validate(raw, self.settings)
            except RejectedEvent as rej:
                dl = self.dead_letter(
                    raw, rej.reason, str(rej), stage=rej.stage, fld=rej.field, pos=pos, topic=topic, now=now
                )
                return Result(rej.reason.value, invalid=[dl])
            return self._stateful(app, ev, raw, pos=pos, topic=topic, now=now)
        except Exception as exc:  # a bug must not lose the event: dead-letter it
            dl = self.dead_letter(
                raw,
                Reason.INTERNAL_ERROR,
                f"{type(exc).__name__}: {exc}",
                stage=stage,
                pos=pos,
                topic=topic,
                now=now,
            )
            return Result(Reason.INTERNAL_ERROR.value, invalid=[dl])

    def _withheld(
        self,
        raw: Record,
        reason: Reason,
        message: str,
        stage: str,
        pos: Position,
        topic: str | None,
        now: int,
    ) -> Result:
        """A dead letter whose payload keeps no user data (suppressed user, unusable privacy options)."""
        dl = self.dead_letter(
            privacy.redacted(raw), reason, message, stage=stage, pos=pos, topic=topic, now=now
        )
        return Result(reason.value, invalid=[dl])

    def _duplicate(self, raw: Record, reason: Reason, pos: Position, topic: str | None, now: int) -> Result:
        res = Result(reason.value)
        if self.settings.dead_letter_duplicates:
            res.invalid.append(
                self.dead_letter(
                    raw,
                    reason,
                    f"{reason.value}: {reason.description}",
                    stage="dedupe",
                    pos=pos,
                    topic=topic,
                    now=now,
                )
            )
        else:
            self.counters[reason.value] += 1
        return res

    def _stateful(
        self, app: App, ev: Any, raw: Record, *, pos: Position, topic: str | None, now: int
    ) -> Result:
        s = self.settings
        app_id = app.app_id
        dkey = f"{app_id}:{ev.device_id}"
        loaded = self.state.get_device(dkey)
        state: dict[str, Any] = loaded if loaded is not None else {}
        if pos != NO_POSITION and state.get("p") == pos[0] and state.get("o", -1) >= pos[1]:
            # a replay (restart, rebalance, re-seek) of a record the device's state already
            # holds: records are processed in order per partition, and a state is stored only
            # after the outputs of every record up to it were acknowledged; produce nothing
            self.counters["replayed"] += 1
            return Result(outcome=REPLAYED)
        mkey = dedupe.message_key(app_id, raw["message_id"])
        seen = self.state.get_seen(mkey)
        if dedupe.same_position(seen, pos):
            # a replay of the very record that created this message-id entry (a second net: the
            # entry is stored after the device state that holds the record)
            self.counters["replayed"] += 1
            return Result(outcome=REPLAYED)

        # dedupe: message id, then content
        reason, entry = dedupe.check_message_id(seen, int(raw["received_at"]), pos, self._mid_window)
        if reason is not None:
            return self._duplicate(raw, reason, pos, topic, now)
        if self._content_window and raw.get("source") not in s.content_dedupe_exempt_sources:
            digest = dedupe.content_digest(raw, ev.device_id, ev.properties, ev.traits)
            recent = state.get("c", "")
            if recent.__class__ is not str:  # a state stored before the string format
                recent = dedupe.from_map(recent)
            reason, state["c"] = dedupe.check_content(
                recent,
                digest,
                dedupe.content_clock(ev),
                pos,
                self._content_window,
                self._content_late,
                now,
                self._content_late_max,
            )
            if reason is not None:
                return self._duplicate(raw, reason, pos, topic, now)

        ident = identity.resolve(state, raw, s.anonymize_event_names)
        if ident.user_id and self.privacy.suppressed(app_id, ident.user_id):
            # the device belongs to a deleted user: drop the event, keep the state as it was
            return self._withheld(raw, Reason.SUPPRESSED, _SUPPRESSED_MSG, "identity", pos, topic, now)
        ms, cp = enrich.attribution(ev.properties, ev.context)
        if ms and not state.get("ms"):
            state["ms"] = ms
        if cp and not state.get("cp"):
            state["cp"] = cp
        media_source, campaign = state.get("ms"), state.get("cp")

        state.pop("tc", None)  # the session is active again: the timer may close it again
        sess, seq, session_records = sessions.assign(
            state,
            app_id=app_id,
            device=ev.device_id,
            raw=raw,
            event_time=ev.event_time,
            heartbeat_offset=ev.heartbeat_offset,
            is_heartbeat=ev.is_heartbeat,
            user_key=ident.user_key,
            user_id=ident.user_id,
            media_source=media_source,
            campaign=campaign,
            inactivity_s=app.session_timeout_s,
            client_idle_s=app.client_session_idle_s,
            emit_interval_s=s.session_emit_interval_s,
            now=now,
        )

        rec = {**_ENRICHED_DEFAULTS, **raw}
        if ev.revenue is not None:
            cur = ev.currency or "USD"
            conv = convert_revenue(
                self.rates,
                ev.revenue,
                cur,
                app.reporting_currency,
                ev.event_time,
                limit_usd=s.revenue_limit_usd,
            )
            self.counters["fx_" + conv.fx_status] += 1
            rec["revenue"] = float(ev.revenue)
            rec["currency"] = cur
            rec["revenue_usd"] = conv.revenue_usd
            rec["revenue_reporting"] = conv.revenue_reporting
            rec["fx_rate_usd"] = conv.fx_rate_usd
            rec["fx_rate_reporting"] = conv.fx_rate_reporting
            rec["fx_hour"] = conv.fx_hour
            rec["fx_status"] = conv.fx_status
            rec["revenue_in_range"] = conv.revenue_in_range
        rec["reporting_currency"] = app.reporting_currency
        rec["session_id"] = sess["id"]
        rec["session_seq"] = seq
        rec["heartbeat_offset"] = (
            ev.heartbeat_offset if ev.heartbeat_offset is not None else raw.get("heartbeat_offset")
        )
        rec["user_id"] = ident.user_id
        rec["user_key"] = ident.user_key
        rec["device_id"] = ident.device_id
        rec["event_time"] = ev.event_time
        rec["client_time"] = ev.client_time
        rec["media_source"] = media_source
        rec["campaign"] = campaign
        ckey = (raw.get("context"), raw.get("user_agent"))  # context text repeats per device
        ctx = self._context_cache.get(ckey)
        if ctx is None:
            if len(self._context_cache) >= 8192:
                self._context_cache.clear()
            ctx = self._context_cache[ckey] = enrich.context_fields(raw, ev.context)
        rec.update(ctx)
        props = ev.properties
        if props:
            rec["error_level"] = enrich._str(props.get("error_level"))
            rec["error_code"] = enrich._str(props.get("error_code"))
            rec["product_id"] = enrich.product_id(props)
            if app.drop_properties:
                rec["properties"] = enrich.strip_properties(raw["properties"], props, app.drop_properties)
        rec["processed_at"] = now

        res = Result(
            "enriched",
            enriched=[(dkey, rec)],
            device_key=dkey,
            session_open=not sess.get("x"),
            session_deadline=now
            + sessions.timeout_ms(sess, app.session_timeout_s, app.client_session_idle_s),
            clock=int(raw["received_at"]),
        )
        for srec in session_records:
            res.sessions.append((f"{app_id}:{srec['session_id']}", srec))
        self.counters["enriched"] += 1
        self.counters["sessions"] += len(session_records)
        if pos != NO_POSITION:
            state["p"], state["o"] = pos
        self.state.put_device(dkey, state)
        if entry is not None:
            self.state.put_seen(mkey, entry)
            res.seen_key, res.seen_expires = mkey, int(entry[0])
        return res

    def close_idle(self, device_key: str, now: int) -> Keyed | None:
        """The closing session record of an idle device (worker timer), or None.

        The device state remembers the session the timer closed (``tc``, dropped by the device's
        next event), so it is closed once, also across restarts: the worker finds open sessions
        by scanning the stored states, and skips that one. The session itself stays as it was
        (finalized lazily by the next event, which may still continue it).
        """
        state = self.state.get_device(device_key)
        if not state or not state.get("s"):
            return None
        if state.get("tc") == state["s"].get("id"):
            return None  # closed by the timer already
        app_id, _, device = device_key.partition(":")
        app = self.apps(app_id)
        if app is None:
            return None
        rec = sessions.idle_close(
            app_id,
            device,
            state["s"],
            inactivity_s=app.session_timeout_s,
            client_idle_s=app.client_session_idle_s,
            now=now,
        )
        if rec is None:
            return None
        state["tc"] = rec["session_id"]
        self.state.put_device(device_key, state)
        self.counters["sessions"] += 1
        return f"{app_id}:{rec['session_id']}", rec


DUPLICATES = DUPLICATE_REASONS
