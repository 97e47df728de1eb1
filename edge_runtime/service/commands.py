"""Commands in on `<prefix>/<device_id>/cmd/<name>`: parsed, dispatched through a registry, answered on `reply`.

The registry is the extension point: `registry.register("install", handler)` adds a command (model updates
come this way) without touching the dispatcher. A handler gets the parsed JSON object and returns the reply
fields for success, or raises CommandError with the reason."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Reply = Callable[[dict[str, Any]], None]

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_NESTING = 16
_PART_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_SHOWN_PAYLOAD_CHARS = 200


class CommandError(ValueError):
    """A command that cannot be carried out; the message is the error sent back, with `reason` (a
    machine-readable code) when there is one."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def part_id_of(body: dict[str, Any]) -> str:
    """The trigger's part id, checked: it appears in topics (heatmaps), so only safe characters."""
    part_id = body.get("part_id")
    if part_id is None:
        raise CommandError("missing part_id")
    if not isinstance(part_id, str) or not _PART_ID.match(part_id):
        raise CommandError("part_id must be a string of 1-128 letters, digits or . _ : @ -")
    return part_id


def parse_body(payload: bytes) -> dict[str, Any]:
    """An empty payload is an empty object; anything else must be a JSON object."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(f"payload is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES} limit")
    if not payload.strip():
        return {}
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as error:
        raise CommandError(f"payload is not valid JSON: {error}") from error
    except RecursionError as error:  # the parser recurses once per level of nesting
        raise CommandError(f"payload is nested more than {MAX_NESTING} levels deep") from error
    if not isinstance(body, dict):
        raise CommandError(f"payload must be a JSON object, got {type(body).__name__}")
    if nesting_depth(body) > MAX_NESTING:  # handlers and validators recurse too; no command needs this depth
        raise CommandError(f"payload is nested more than {MAX_NESTING} levels deep")
    return body


def nesting_depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (1 for a flat object); without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


class CommandRegistry:
    """Command name -> handler; every outcome, good or bad, is answered through `reply`."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    def dispatch(self, name: str, payload: bytes) -> None:
        """Run one command; malformed or failing commands get an error reply, never an exception."""
        try:
            handler = self.handlers.get(name)
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise CommandError(f"unknown command {name!r}; known commands: {known}")
            answer = handler(parse_body(payload))
        except CommandError as error:
            self._refuse(name, payload, str(error), error.reason)
            return
        except Exception as error:  # a handler bug is answered too, and the service keeps running
            log.exception("command %s failed", name)
            self._refuse(name, payload, f"internal error: {error}")
            return
        self.reply({"command": name, "ok": True, **answer})

    def _refuse(self, name: str, payload: bytes, error: str, reason: str | None = None) -> None:
        log.warning("command %s refused: %s", name, error)
        shown = payload[:_SHOWN_PAYLOAD_CHARS].decode("utf-8", errors="replace")
        answer: dict[str, Any] = {"command": name, "ok": False, "error": error, "payload": shown}
        if reason is not None:
            answer["reason"] = reason
        request_id = _request_id_of(payload)
        if request_id is not None:  # lets the sender match the refusal to its request
            answer["request_id"] = request_id
        self.reply(answer)


def _request_id_of(payload: bytes) -> str | None:
    try:
        body = parse_body(payload)
    except CommandError:
        return None
    request_id = body.get("request_id")
    return request_id if isinstance(request_id, str) and _PART_ID.match(request_id) else None
