"""proxy/core/notices.py: each format's body for a notice, and the retry backoff."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.notices import (
    EVENTS,
    Notice,
    NoticeKind,
    backoff_s,
    cloudevent,
    content_type,
    event_type,
    payload,
    rfc3339,
    slack,
    text,
)

WALL = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z
CHANGE = {"commit": "abc1234", "url": "https://git.example/pr/7", "summary": "faster checkout"}


def _rolled_back() -> Notice:
    return Notice(
        kind=NoticeKind.ROLLED_BACK,
        time=WALL,
        service="checkout",
        release="2.1.0",
        release_id="r-1",
        change=CHANGE,
        step=1,
        steps=3,
        percent=10.0,
        status="rolled_back",
        actor="controller",
        verdict="canary errors 4.10% vs stable 0.20% (tier free)",
    )


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(WALL) == "2027-01-15T08:00:00.250Z"
    assert datetime.fromisoformat(rfc3339(WALL).replace("Z", "+00:00")).timestamp() == WALL


def test_a_rollback_says_what_where_who_and_why() -> None:
    assert text(_rolled_back()) == (
        "checkout 2.1.0: rolled back at step 2/3 (10% canary) by controller: "
        "canary errors 4.10% vs stable 0.20% (tier free)"
    )


def test_the_cloudevent_is_a_structured_1_0_envelope() -> None:
    envelope = cloudevent(_rolled_back(), "id-7", "rollout-proxy/host-a")
    assert {k: v for k, v in envelope.items() if k != "data"} == {
        "specversion": "1.0",
        "id": "id-7",
        "source": "rollout-proxy/host-a",
        "type": "dev.rollout-proxy.release.rolled_back",
        "time": "2027-01-15T08:00:00.250Z",
        "datacontenttype": "application/json",
        "subject": "checkout",
    }
    data = envelope["data"]
    assert data["release"] == {"id": "r-1", "version": "2.1.0", "change": CHANGE}
    assert (data["event"], data["step"], data["steps"], data["canary_percent"]) == (
        "rolled_back",
        1,
        3,
        10.0,
    )
    assert data["verdict"] == _rolled_back().verdict
    assert content_type("cloudevents").startswith("application/cloudevents+json")


def test_every_kind_has_a_cloudevents_type() -> None:
    types = {event_type(NoticeKind(e)) for e in EVENTS}
    assert len(types) == len(EVENTS)
    assert "dev.rollout-proxy.config.reload_failed" in types
    assert all(t.startswith("dev.rollout-proxy.") for t in types)


def test_slack_has_text_and_blocks_with_the_change() -> None:
    body = slack(_rolled_back())
    assert body["text"] == text(_rolled_back())
    section, context = body["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    words = context["elements"][0]["text"]
    assert "status: rolled_back" in words
    assert "commit abc1234" in words
    assert "<https://git.example/pr/7|change>" in words


def test_json_is_the_notice_with_its_id() -> None:
    body = payload(_rolled_back(), "json", "id-9", "src")
    assert (body["id"], body["event"], body["service"], body["status"]) == (
        "id-9",
        "rolled_back",
        "checkout",
        "rolled_back",
    )
    assert body["text"] == text(_rolled_back())
    assert payload(_rolled_back(), "slack", "id-9", "src") == slack(_rolled_back())


def test_a_failed_reload_and_a_config_rollout_read_plainly() -> None:
    reload = Notice(
        kind=NoticeKind.CONFIG_RELOAD_FAILED,
        time=WALL,
        status="invalid",
        actor="SIGHUP",
        verdict="services[0].rollout.salt: must not be empty",
    )
    assert text(reload) == (
        "rollout-proxy: config reload failed by SIGHUP: services[0].rollout.salt: must not be empty"
    )
    envelope = cloudevent(reload, "i", "s")
    assert "subject" not in envelope
    assert envelope["data"]["service"] is None
    assert envelope["data"]["release"] is None
    started = Notice(NoticeKind.RELEASE_STARTED, WALL, "shop", step=0, steps=2, percent=5)
    assert text(started) == "shop rollout: started at step 1/2 (5% canary)"
    baseline = Notice(NoticeKind.STEP_ADVANCED, WALL, "shop", step=-1, steps=2)
    assert text(baseline) == "shop rollout: advanced to baseline period"


def test_the_change_summary_is_told_when_a_release_starts() -> None:
    notice = Notice(NoticeKind.RELEASE_STARTED, WALL, "shop", "1.0", "r", CHANGE, 0, 2, 10.0)
    assert text(notice).endswith(" - faster checkout")


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_s(a, 0.5, 4.0, 0.0) for a in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [backoff_s(a, 0.5, 4.0, 1.0) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@given(
    attempt=st.integers(0, 1000),
    base=st.floats(0.001, 60.0),
    cap=st.floats(0.001, 600.0),
    draw=st.floats(0.0, 1.0),
)
def test_backoff_stays_between_half_the_ceiling_and_the_ceiling(
    attempt: int, base: float, cap: float, draw: float
) -> None:
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    delay = backoff_s(attempt, base, cap, draw)
    assert ceiling / 2 <= delay <= ceiling * (1 + 1e-12)
    assert delay <= cap * (1 + 1e-12)


@given(attempt=st.integers(0, 60), base=st.floats(0.001, 10.0), draw=st.floats(0.0, 1.0))
def test_backoff_never_shrinks_from_one_attempt_to_the_next_at_the_floor(
    attempt: int, base: float, draw: float
) -> None:
    assert backoff_s(attempt + 1, base, 30.0, 0.0) >= backoff_s(attempt, base, 30.0, 0.0)
    assert backoff_s(attempt, base, 30.0, draw) >= backoff_s(attempt, base, 30.0, 0.0)
