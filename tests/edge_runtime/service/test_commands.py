"""Hostile command payloads: every one gets a refusal reply and none logs a traceback."""

from __future__ import annotations

import logging

import pytest

from edge_runtime.service.commands import MAX_NESTING, CommandRegistry


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 60_000,  # unbalanced and deep: the parser recursed until RecursionError
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,  # valid JSON, 10 000 levels deep
        b'{"request_id": "r1", "x": ' + b"[" * 40 + b"]" * 40 + b"}",  # parses, deeper than any command needs
    ],
    ids=["unbalanced", "deep-object", "moderately-deep"],
)
def test_deeply_nested_json_is_refused_with_a_reply_and_no_traceback(payload, caplog):
    replies: list[dict] = []
    registry = CommandRegistry(replies.append)
    registry.register("install", lambda body: {"accepted": True})
    with caplog.at_level(logging.DEBUG):
        registry.dispatch("install", payload)
    assert len(replies) == 1 and replies[0]["ok"] is False
    assert "nested" in replies[0]["error"] or "not valid JSON" in replies[0]["error"], replies[0]["error"]
    assert not [record for record in caplog.records if record.exc_info], "no traceback in the log"


def test_nesting_within_the_limit_is_accepted():
    replies: list[dict] = []
    registry = CommandRegistry(replies.append)
    registry.register("status", lambda body: {})
    depth = MAX_NESTING - 1
    registry.dispatch("status", b'{"x": ' + b"[" * depth + b"]" * depth + b"}")
    assert replies == [{"command": "status", "ok": True}]
