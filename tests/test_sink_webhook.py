"""The webhook sink against a real HTTP server on loopback (tests/http_receiver.py).

What a receiver gets (a CloudEvents 1.0 event signed per Standard Webhooks, checked with
Standard Webhooks' own library as well as ours), and how each answer of the endpoint
turns into success or SinkError for the relay.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as StdVerificationError

from vantrack.gateway import wire
from vantrack.gateway.sinks import SinkConfigError, SinkError, sink_class
from vantrack.gateway.sinks.base import EXTRA_ROUTE, EXTRA_VALUE, Record
from vantrack.gateway.sinks.webhook import (
    USER_AGENT,
    WebhookConfig,
    WebhookSink,
    WebhookVerificationError,
    event_type,
    parse_retry_after,
    sign,
    verify,
)
from vantrack.tools.http_receiver import HttpReceiver, free_tcp_port

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
FLEET = "north-depot"
T_MS = 1_795_000_000_123

_seq = itertools.count(1)


def record(event: int | None = None, device: str = "van-07", **kw: Any) -> Record:
    """A fresh record (its own seq, so its own key) at a stop near Ghent."""
    fields: dict[str, Any] = dict(
        device_id=7, device=device, seq=next(_seq), time_ms=T_MS, received_ms=T_MS + 2500,
        lat_e6=51_054_342, lon_e6=3_717_424, speed_dms=83, course_deg=270, hdop_x10=9,
        sats=11, event=event,
    )  # fmt: skip
    if event is not None:
        fields |= dict(fence=3, stop="S-0042", extra={EXTRA_VALUE: 45, EXTRA_ROUTE: 2})
    return Record(**(fields | kw))


def config(url: str, **kw: Any) -> WebhookConfig:
    return WebhookConfig(name="ops", type="webhook", url=url, secret=SECRET, **kw)


def deliver(cfg: WebhookConfig, *records: Record) -> list[SinkError | None]:
    """Send each record in turn through one sink (one session); the outcome of each."""

    async def run() -> list[SinkError | None]:
        sink = WebhookSink(cfg, FLEET)
        await sink.start()
        out: list[SinkError | None] = []
        try:
            for r in records:
                try:
                    await sink.send(r)
                    out.append(None)
                except SinkError as e:
                    out.append(e)
        finally:
            await sink.close()
        return out

    return asyncio.run(run())


def failure(cfg: WebhookConfig, rec: Record | None = None) -> SinkError:
    (outcome,) = deliver(cfg, rec or record())
    assert outcome is not None, "expected the send to fail"
    return outcome


def by_id(rx: HttpReceiver, key: str) -> list[dict[str, Any]]:
    return [r for r in rx.requests() if r["headers"].get("webhook-id") == key]


@pytest.fixture(scope="module")
def rx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpReceiver]:
    """An endpoint that accepts everything, shared by the tests that only read requests."""
    with HttpReceiver(free_tcp_port(), tmp_path_factory.mktemp("rx") / "ok.jsonl") as r:
        yield r


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Any]:
    """Starts receivers with the given options for one test; all stopped after it."""
    started: list[HttpReceiver] = []

    def start(*args: str) -> HttpReceiver:
        r = HttpReceiver(free_tcp_port(), tmp_path / f"rx{len(started)}.jsonl", *args)
        started.append(r)
        return r.start()

    yield start
    for r in started:
        r.stop()


# --- what a receiver gets -----------------------------------------------------------------


def test_a_position_arrives_as_a_cloudevents_1_0_structured_event(rx: HttpReceiver) -> None:
    rec = record()
    assert deliver(config(rx.url + "/hooks/vantrack"), rec) == [None]

    (req,) = by_id(rx, rec.key)
    assert req["method"] == "POST" and req["path"] == "/hooks/vantrack"
    assert req["headers"]["content-type"] == "application/cloudevents+json"
    assert req["headers"]["user-agent"] == USER_AGENT and USER_AGENT.startswith("vantrack/")
    event = json.loads(req["body"])
    assert event == {
        "specversion": "1.0",
        "id": rec.key,
        "source": "/vantrack/north-depot",
        "type": "vantrack.position",
        "subject": "van-07",
        "time": "2026-11-18T11:06:40.123Z",
        "datacontenttype": "application/json",
        "data": rec.to_json(),
    }
    # CloudEvents 1.0: the required attributes are non-empty strings.
    for attr in ("id", "source", "specversion", "type"):
        assert isinstance(event[attr], str) and event[attr]


EXPECTED_TYPES = {
    wire.EventType.ARRIVED: "vantrack.stop.arrived",
    wire.EventType.DEPARTED: "vantrack.stop.departed",
    wire.EventType.APPROACHING: "vantrack.stop.approaching",
    wire.EventType.OUT_OF_SEQUENCE: "vantrack.stop.out_of_sequence",
    wire.EventType.ROUTE_STARTED: "vantrack.route.started",
    wire.EventType.ROUTE_FINISHED: "vantrack.route.finished",
    wire.EventType.ZONE_ENTER: "vantrack.zone.enter",
    wire.EventType.ZONE_EXIT: "vantrack.zone.exit",
    wire.EventType.STATUS: "vantrack.device.status",
}


def test_every_event_kind_arrives_with_its_cloudevents_type(rx: HttpReceiver) -> None:
    assert set(EXPECTED_TYPES) == set(wire.EventType), "a new event type needs a CE type"
    recs = {kind: record(int(kind)) for kind in EXPECTED_TYPES}
    recs[wire.EventType.STATUS] = record(
        int(wire.EventType.STATUS), fence=None, stop=None,
        extra={wire.StatusKey.DROPPED: 0, wire.StatusKey.QUEUED: 12},
    )  # fmt: skip
    assert deliver(config(rx.url), *recs.values()) == [None] * len(recs)

    for kind, rec in recs.items():
        (req,) = by_id(rx, rec.key)
        event = json.loads(req["body"])
        assert event["type"] == EXPECTED_TYPES[kind]
        assert event["data"] == rec.to_json()
        assert event["data"]["event"] == wire.event_name(kind)


def test_an_unknown_event_number_gets_a_generic_type() -> None:
    assert event_type(record(99)) == "vantrack.event.event_99"


def test_an_event_of_a_newer_firmware_is_delivered(rx: HttpReceiver) -> None:
    rec = record(99, extra={})  # the wire allows event types up to 255
    assert deliver(config(rx.url), rec) == [None]
    (req,) = by_id(rx, rec.key)
    assert json.loads(req["body"])["type"] == "vantrack.event.event_99"


def test_the_signature_verifies_with_standard_webhooks_library_and_with_ours(
    rx: HttpReceiver,
) -> None:
    rec = record(int(wire.EventType.ARRIVED), device="bäckerei-van")  # non-ASCII in the body
    deliver(config(rx.url), rec)
    (req,) = by_id(rx, rec.key)
    body = req["body"].encode()

    assert Webhook(SECRET).verify(body, req["headers"])["id"] == rec.key
    assert verify(SECRET, req["headers"], body)["subject"] == "bäckerei-van"
    assert req["headers"]["webhook-signature"].startswith("v1,")
    assert abs(int(req["headers"]["webhook-timestamp"]) - time.time()) < 30


def test_our_signature_matches_standard_webhooks_library_byte_for_byte() -> None:
    body = '{"a":"ü"}'
    ts = 1_795_000_000
    expected = Webhook(SECRET).sign("7-1", dt.datetime.fromtimestamp(ts, dt.UTC), body)
    assert sign(SECRET, "7-1", ts, body.encode()) == expected


def test_verify_rejects_a_tampered_body_a_wrong_secret_and_an_old_timestamp(
    rx: HttpReceiver,
) -> None:
    rec = record(int(wire.EventType.DEPARTED))
    deliver(config(rx.url), rec)
    (req,) = by_id(rx, rec.key)
    headers, body = req["headers"], req["body"].encode()
    sent_at = int(headers["webhook-timestamp"])

    tampered = body.replace(b"van-07", b"van-08")
    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify(SECRET, headers, tampered)
    with pytest.raises(StdVerificationError):
        Webhook(SECRET).verify(tampered, headers)

    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify(OTHER_SECRET, headers, body)

    with pytest.raises(WebhookVerificationError, match="tolerance 300 s"):
        verify(SECRET, headers, body, now=sent_at + 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(SECRET, headers, body, now=sent_at - 301)  # from the future
    assert verify(SECRET, headers, body, now=sent_at + 299)["id"] == rec.key

    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(WebhookVerificationError, match=f"missing header.*{missing}"):
            verify(SECRET, partial, body)


def test_verify_takes_header_names_in_any_case_and_any_of_several_signatures() -> None:
    body, ts = b'{"id":"7-9"}', int(time.time())
    good = sign(SECRET, "7-9", ts, body)
    headers = {
        "Webhook-Id": "7-9",
        "WEBHOOK-TIMESTAMP": str(ts),
        # during a secret rotation a sender signs with the old and the new secret
        "Webhook-Signature": f"{sign(OTHER_SECRET, '7-9', ts, body)} v2,abc {good}",
    }
    assert verify(SECRET, headers, body) == {"id": "7-9"}
    assert Webhook(SECRET).verify(body, headers) == {"id": "7-9"}
    # a signature for another message id does not carry over
    headers["Webhook-Id"] = "7-10"
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, body)


def test_the_same_record_sent_twice_carries_the_same_webhook_id(rx: HttpReceiver) -> None:
    rec = record(int(wire.EventType.ARRIVED))
    assert deliver(config(rx.url), rec, rec) == [None, None]

    first, second = by_id(rx, rec.key)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == rec.key
    assert json.loads(first["body"])["id"] == json.loads(second["body"])["id"] == rec.key
    for req in (first, second):
        verify(SECRET, req["headers"], req["body"].encode())


def test_sends_reuse_one_kept_alive_connection(rx: HttpReceiver) -> None:
    recs = [record() for _ in range(3)]
    deliver(config(rx.url), *recs)
    peers = {by_id(rx, r.key)[0]["peer"] for r in recs}
    assert len(peers) == 1, peers


# --- how the endpoint's answers come back ------------------------------------------------


def test_a_500_answer_raises_a_retryable_sink_error(receiver: Any) -> None:
    r = receiver("--status", "500")
    e = failure(config(r.url))
    assert e.retry and e.retry_after is None
    assert "HTTP 500" in str(e) and "injected by http_receiver" in str(e)


def test_410_gone_raises_a_sink_error_that_asks_not_to_retry(receiver: Any) -> None:
    r = receiver("--status", "410")
    e = failure(config(r.url))
    assert e.retry is False and "410" in str(e)


def test_429_with_retry_after_seconds_sets_retry_after(receiver: Any) -> None:
    r = receiver("--status", "429", "--retry-after", "42")
    e = failure(config(r.url))
    assert e.retry and e.retry_after == 42.0 and "HTTP 429" in str(e)


def test_503_with_retry_after_as_http_date_sets_retry_after(receiver: Any) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    r = receiver("--status", "503", "--retry-after", when)
    e = failure(config(r.url))
    assert e.retry and e.retry_after is not None and 100 <= e.retry_after <= 121


def test_retry_after_is_parsed_as_seconds_or_http_date_and_never_negative() -> None:
    now = 1_795_000_000.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 17 ") == 17.0
    assert parse_retry_after(email.utils.formatdate(now + 60, usegmt=True), now) == 60.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after(None) is None


def test_other_errors_carry_status_and_the_start_of_the_body(receiver: Any) -> None:
    r = receiver("--status", "403", "--retry-after", "5")
    e = failure(config(r.url))
    assert e.retry and e.retry_after is None  # Retry-After counts on 429, 408 and 5xx only
    assert str(e) == "HTTP 403 Forbidden: 'failure 403 injected by http_receiver'"


def test_a_redirect_is_not_followed(receiver: Any) -> None:
    r = receiver("--status", "307")
    e = failure(config(r.url))
    assert "redirect" in str(e) and "/moved" in str(e) and "not followed" in str(e)
    assert [q["path"] for q in r.requests()] == ["/"]  # /moved was never asked for


def test_an_endpoint_that_is_down_raises_sink_error_promptly() -> None:
    port = free_tcp_port()  # nothing listens there
    t0 = time.monotonic()
    e = failure(config(f"http://127.0.0.1:{port}/", timeout_s=30.0))
    assert time.monotonic() - t0 < 10  # refused at once, not the 30 s timeout
    assert e.retry and f"cannot connect to 127.0.0.1:{port}" in str(e)


def test_an_unknown_host_raises_sink_error() -> None:
    # .invalid never resolves (RFC 6761); without any DNS the lookup may time out instead.
    e = failure(config("http://no-such-host.invalid/", timeout_s=3.0))
    assert e.retry
    assert str(e).startswith("cannot resolve no-such-host.invalid: ") or "no answer" in str(e)


def test_an_endpoint_slower_than_timeout_s_raises_sink_error(receiver: Any) -> None:
    r = receiver("--delay", "30")
    t0 = time.monotonic()
    e = failure(config(r.url, timeout_s=0.5))
    assert time.monotonic() - t0 < 10  # the 0.5 s timeout, not the 30 s the answer takes
    assert str(e) == "no answer within 0.5 s"


def test_a_tls_error_raises_sink_error(receiver: Any) -> None:
    r = receiver()  # plain HTTP: the TLS handshake fails
    e = failure(config(r.url.replace("http:", "https:")))
    assert e.retry and str(e).startswith(f"TLS error with 127.0.0.1:{r.port}: ")


def test_with_fail_every_3_some_sends_fail_and_retrying_them_delivers_all(
    receiver: Any,
) -> None:
    r = receiver("--fail-every", "3")
    recs = [record() for _ in range(8)]
    cfg = config(r.url)

    first = deliver(cfg, *recs)
    assert [i + 1 for i, e in enumerate(first) if e is not None] == [3, 6]
    assert all(e is None or (e.retry and "HTTP 500" in str(e)) for e in first)

    # Retried as the relay does: requests 9 (fails again) and 10, then 11.
    pending, rounds = [rec for rec, e in zip(recs, first, strict=True) if e is not None], 1
    while pending:
        rounds += 1
        outcomes = deliver(cfg, *pending)
        pending = [rec for rec, e in zip(pending, outcomes, strict=True) if e is not None]
    assert rounds == 3
    log = r.requests()
    assert len(log) == 11
    assert [q["headers"]["webhook-id"] for q in log if q["status"] == 200] == [
        rec.key for rec in recs[:2] + recs[3:5] + recs[6:] + [recs[5], recs[2]]
    ]


def test_an_endpoint_that_goes_away_and_comes_back_gets_the_retry(receiver: Any) -> None:
    r = receiver()
    rec = record()

    async def run() -> list[SinkError | None]:
        sink = WebhookSink(config(r.url), FLEET)
        await sink.start()
        out: list[SinkError | None] = []
        try:
            for step in ("up", "down", "up again"):
                if step == "down":
                    r.kill()
                elif step == "up again":
                    r.start()
                try:
                    await sink.send(rec)
                    out.append(None)
                except SinkError as e:
                    out.append(e)
        finally:
            await sink.close()
        return out

    first, while_down, after = asyncio.run(run())
    assert first is None and after is None
    assert while_down is not None and while_down.retry
    assert [q["headers"]["webhook-id"] for q in r.requests()] == [rec.key, rec.key]


# --- configuration -----------------------------------------------------------------------


def check_error(**kw: Any) -> SinkConfigError:
    fields = {"name": "ops", "type": "webhook", "url": "https://example.com/h", "secret": SECRET}
    with pytest.raises(SinkConfigError) as info:
        WebhookConfig(**(fields | kw)).check()
    return info.value


def test_a_valid_config_passes_check_and_the_registry_finds_the_sink() -> None:
    config("https://hooks.example.com/vantrack").check()
    config("http://[::1]:8080/h").check()
    assert sink_class("webhook") is WebhookSink
    assert WebhookSink.config_class is WebhookConfig


@pytest.mark.parametrize(
    "url", ["", "ftp://example.com/h", "example.com/h", "https:///h", "http://h:99999/"]
)
def test_config_check_refuses_a_bad_url_naming_the_key(url: str) -> None:
    assert check_error(url=url).key == "url"


def test_config_check_refuses_a_missing_or_doubled_secret_naming_the_key(tmp_path: Path) -> None:
    assert check_error(secret=None).key == "secret"
    assert check_error(secret="").key == "secret"
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    e = check_error(secret_file=str(f))
    assert e.key == "secret" and "not both" in e.message


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (base64.b64encode(bytes(32)).decode(), "must start with 'whsec_'"),
        ("whsec_not*base64!", "not base64"),
        ("whsec_" + base64.b64encode(bytes(16)).decode(), "16 bytes"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "65 bytes"),
    ],
)
def test_config_check_refuses_a_bad_whsec_secret_naming_the_key(secret: str, why: str) -> None:
    e = check_error(secret=secret)
    assert e.key == "secret" and why in e.message
    assert secret not in str(e)  # a secret is never echoed into logs


def test_a_secret_file_is_read_and_checked(tmp_path: Path, rx: HttpReceiver) -> None:
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    cfg = WebhookConfig(name="ops", type="webhook", url=rx.url, secret_file=str(f))
    cfg.check()
    rec = record()
    assert deliver(cfg, rec) == [None]
    (req,) = by_id(rx, rec.key)
    verify(SECRET, req["headers"], req["body"].encode())

    assert check_error(secret=None, secret_file=str(tmp_path / "absent")).key == "secret_file"
    f.write_text("whsec_short")
    assert check_error(secret=None, secret_file=str(f)).key == "secret_file"


def test_target_hides_credentials_and_query() -> None:
    sink = WebhookSink(config("https://user:pw@hooks.example.com:8443/in?token=abc"), FLEET)
    assert sink.target() == "https://hooks.example.com:8443/in"
