"""Hostile command payloads: every one gets a refusal reply and none logs a traceback."""

from __future__ import annotations

import logging
import time

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


def test_a_signed_command_is_accepted_once_even_across_restarts(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_runtime.service.commands import CommandError
    from edge_runtime.service.signed_commands import CommandVerifier, signed_command

    key = Ed25519PrivateKey.generate()
    record = tmp_path / "state" / "commands.json"
    envelope = signed_command("rollback", "cam1", {"request_id": "r1"}, key.sign)
    assert envelope["request_id"] == "r1", "outside too, to match a refusal"
    first = CommandVerifier([key.public_key()], "cam1", 600, record)
    assert first.open("rollback", envelope) == {"request_id": "r1"}

    def refusal(verifier: CommandVerifier, command: str, sent: dict) -> str | None:
        with pytest.raises(CommandError) as refused:
            verifier.open(command, sent)
        return refused.value.reason

    assert refusal(first, "rollback", envelope) == "replayed"
    restarted = CommandVerifier([key.public_key()], "cam1", 600, record)
    assert refusal(restarted, "rollback", envelope) == "replayed", "the last accepted command is kept on disk"
    newer = signed_command("rollback", "cam1", {}, key.sign, now_s=time.time() + 1)
    assert restarted.open("rollback", newer) == {}

    tampered = dict(signed_command("rollback", "cam1", {}, key.sign))
    tampered["signed"] = signed_command("rollback", "cam9", {}, key.sign)["signed"]  # someone else's body
    assert refusal(restarted, "rollback", tampered) == "bad_signature"
    assert refusal(restarted, "rollback", {"request_id": "r2"}) == "unsigned"
