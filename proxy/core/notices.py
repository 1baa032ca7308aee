"""Release notifications as values: what happened (`Notice`), and the body each receiver
format sends for it. Pure: time, ids and randomness are passed in.

Formats: `slack` (Slack-compatible incoming-webhook JSON, `text` and `blocks`, which
Mattermost and Teams bridges also take), `cloudevents` (a CloudEvents 1.0 envelope in
structured mode) and `json` (the notice as plain JSON). `backoff_s` is the delay before a
delivery's next attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class NoticeKind(StrEnum):
    RELEASE_STARTED = "release_started"
    STEP_ADVANCED = "step_advanced"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    COMPLETED = "completed"
    CONFIG_RELOAD_FAILED = "config_reload_failed"


EVENTS = tuple(kind.value for kind in NoticeKind)
FORMATS = ("slack", "cloudevents", "json")
CLOUDEVENTS_PREFIX = "dev.rollout-proxy"
_HEADLINES = {
    NoticeKind.RELEASE_STARTED: "started",
    NoticeKind.STEP_ADVANCED: "advanced",
    NoticeKind.PAUSED: "paused",
    NoticeKind.ROLLED_BACK: "rolled back",
    NoticeKind.COMPLETED: "completed",
    NoticeKind.CONFIG_RELOAD_FAILED: "config reload failed",
}
_CHANGE_KEYS = ("summary", "commit", "url", "author")


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing the team is told about. `step` is 0-based (-1: the baseline period);
    `verdict` is the reason in words (the journal entry's reason, or the evidence's summary;
    the error of a failed reload)."""

    kind: NoticeKind
    time: float  # wall clock
    service: str = ""  # empty for a config reload
    release: str = ""  # the release's version ("" for a rollout of the config file)
    release_id: str = ""
    change: Mapping[str, Any] = field(default_factory=dict)
    step: int = 0
    steps: int = 0
    percent: float | None = None  # the canary share of the step now served
    status: str = ""
    actor: str = ""
    verdict: str = ""


def rfc3339(wall: float) -> str:
    """`wall` (Unix time) as an RFC 3339 UTC timestamp, to the millisecond."""
    moment = datetime.fromtimestamp(wall, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _subject(notice: Notice) -> str:
    if notice.kind is NoticeKind.CONFIG_RELOAD_FAILED:
        return "rollout-proxy"
    what = f"{notice.service} {notice.release}".strip()
    return what if notice.release else f"{what} rollout"


def _step_words(notice: Notice) -> str:
    if notice.steps <= 0:
        return ""
    if notice.step < 0:
        return "baseline period"
    share = f" ({notice.percent:g}% canary)" if notice.percent is not None else ""
    return f"step {notice.step + 1}/{notice.steps}{share}"


def text(notice: Notice) -> str:
    """One line for people: who/what, what happened, why."""
    line = f"{_subject(notice)}: {_HEADLINES[notice.kind]}"
    where = _step_words(notice)
    if where and notice.kind is not NoticeKind.CONFIG_RELOAD_FAILED:
        line += f" at {where}" if notice.kind is not NoticeKind.STEP_ADVANCED else f" to {where}"
    if notice.actor:
        line += f" by {notice.actor}"
    if notice.verdict:
        line += f": {notice.verdict}"
    summary = notice.change.get("summary")
    if summary and notice.kind is NoticeKind.RELEASE_STARTED:
        line += f" - {summary}"
    return line


def data(notice: Notice) -> dict[str, Any]:
    """The notice as plain JSON (the `json` format's body and the CloudEvent's `data`)."""
    change = {k: notice.change[k] for k in _CHANGE_KEYS if notice.change.get(k) is not None}
    release = None
    if notice.release:
        release = {"id": notice.release_id, "version": notice.release, "change": change}
    return {
        "event": notice.kind.value,
        "time": rfc3339(notice.time),
        "service": notice.service or None,
        "release": release,
        "step": notice.step,
        "steps": notice.steps,
        "canary_percent": notice.percent,
        "status": notice.status,
        "actor": notice.actor,
        "verdict": notice.verdict,
        "text": text(notice),
    }


def event_type(kind: NoticeKind) -> str:
    """The CloudEvents `type`: `dev.rollout-proxy.release.rolled_back`,
    `dev.rollout-proxy.config.reload_failed`."""
    if kind is NoticeKind.CONFIG_RELOAD_FAILED:
        return f"{CLOUDEVENTS_PREFIX}.config.reload_failed"
    return f"{CLOUDEVENTS_PREFIX}.release.{kind.value}"


def cloudevent(notice: Notice, event_id: str, source: str) -> dict[str, Any]:
    """A CloudEvents 1.0 envelope, structured mode (sent as application/cloudevents+json)."""
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type(notice.kind),
        "time": rfc3339(notice.time),
        "datacontenttype": "application/json",
        "data": data(notice),
    }
    if notice.service:
        envelope["subject"] = notice.service
    return envelope


def slack(notice: Notice) -> dict[str, Any]:
    """A Slack-compatible incoming-webhook message: `text` (what every bridge shows) and
    `blocks` (the text, then the change and the status as context)."""
    line = text(notice)
    context = [f"status: {notice.status}"] if notice.status else []
    change = notice.change
    if change.get("commit"):
        context.append(f"commit {change['commit']}")
    if change.get("url"):
        context.append(f"<{change['url']}|change>")
    if change.get("author"):
        context.append(f"by {change['author']}")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": line}},
    ]
    if context:
        elements = [{"type": "mrkdwn", "text": " · ".join(context)}]
        blocks.append({"type": "context", "elements": elements})
    return {"text": line, "blocks": blocks}


def payload(notice: Notice, fmt: str, event_id: str, source: str) -> dict[str, Any]:
    """The body a receiver of format `fmt` is sent (`event_id` is the same on every attempt
    of one delivery, so a receiver can tell a retry from a new notice)."""
    if fmt == "slack":
        return slack(notice)
    if fmt == "cloudevents":
        return cloudevent(notice, event_id, source)
    return {"id": event_id, **data(notice)}


def content_type(fmt: str) -> str:
    if fmt == "cloudevents":
        return "application/cloudevents+json; charset=utf-8"
    return "application/json"


def backoff_s(attempt: int, base_s: float, cap_s: float, draw: float) -> float:
    """The delay after failed attempt `attempt` (0 for the first): exponential with "equal
    jitter": half of min(cap, base * 2**attempt) for sure, the other half scaled by `draw`
    (uniform in [0, 1)), so retries of many notices spread out but never come sooner than
    the half."""
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 62))
    return ceiling / 2 + ceiling / 2 * min(max(draw, 0.0), 1.0)
