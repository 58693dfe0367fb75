"""Checks that the bot's messages can ping only whom it means (issue 15, defect 1)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import simcord

# REST calls that create or edit a message: channel posts, DMs, interaction answers,
# follow-ups and their edits.
MESSAGE_WRITES = re.compile(
    r"^/(channels/\d+/messages(/\d+)?|webhooks/\d+/[^/]+(/messages/[^/]+)?"
    r"|interactions/\d+/[^/]+/callback)$"
)


def _payload(json: Any) -> dict[str, Any] | None:
    """The message fields of a request body (an interaction callback nests them)."""
    if not isinstance(json, dict):
        return None
    if "type" in json and isinstance(json.get("data"), dict):
        return json["data"] if "content" in json["data"] or "embeds" in json["data"] else None
    return json


def pinged(env: simcord.Env, channel_id: int, message_id: int) -> set[int]:
    """The users a posted message notified (SimCord resolves the allowed mentions)."""
    message = env.backend.messages[channel_id][message_id]
    return set(message.ping_user_ids)


def assert_pings_at_most(env: simcord.Env, allowed: Iterable[int]) -> int:
    """Every message the bot wrote allows no @everyone/@here, no roles, and no user
    outside ``allowed``; returns how many message writes were checked."""
    allowed_ids = {int(a) for a in allowed}
    checked = 0
    for request in env.http_requests:
        if request.method not in ("POST", "PATCH") or not MESSAGE_WRITES.match(request.path):
            continue
        body = _payload(request.json)
        if body is None or not ({"content", "embeds"} & body.keys()):
            continue
        checked += 1
        mentions = body.get("allowed_mentions")
        where = f"{request.method} {request.path}: {body.get('content')!r}"
        assert mentions is not None, f"no allowed_mentions on {where}"
        assert not mentions.get("parse"), f"{mentions} on {where}"
        assert not mentions.get("roles"), f"{mentions} on {where}"
        assert set(map(int, mentions.get("users", []))) <= allowed_ids, f"{mentions} on {where}"
        assert not mentions.get("replied_user"), f"{mentions} on {where}"
    return checked
