"""How every config of the product reports what is wrong with it: ConfigError, and pydantic's errors as
'key.path: reason (got value)' lines. Here, under edge_runtime, so that the device and the host share them."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ConfigError(ValueError):
    """A config that cannot be used. With `problems`: the 'key.path: reason' lines found in `source` (a file name,
    or what the config came from). Without: `source` is the whole message, e.g. that the file does not exist."""

    def __init__(self, source: str, problems: list[str] | None = None) -> None:
        self.source = source
        self.problems = [] if problems is None else list(problems)
        super().__init__(source if problems is None else f"{source}: " + "; ".join(self.problems))

    def explain(self) -> str:
        """One line per problem under a line naming the source."""
        if not self.problems:
            return str(self)
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        return "\n".join(lines + [f"  {problem}" for problem in self.problems])


def describe_problem(problem: Any, top_level: str = "(top level)") -> str:
    """One pydantic error as 'key.path: message (got value)'. The value is left out where it says nothing (a
    missing key, a whole section) or must not be echoed (anything under a key naming a password)."""
    location = ".".join(str(part) for part in problem["loc"]) or top_level
    message = str(problem["msg"]).removeprefix("Value error, ")
    value = problem.get("input")
    secret = any("password" in str(part) for part in problem["loc"])
    hidden = problem["type"] in ("missing", "model_type") or not problem["loc"] or isinstance(value, (dict, list))
    if secret or hidden:
        return f"{location}: {message}"
    shown = repr(value)
    return f"{location}: {message} (got {shown[:77] + '...' if len(shown) > 80 else shown})"


def describe_problems(error: ValidationError, top_level: str = "(top level)") -> list[str]:
    """Every problem of a failed validation, in pydantic's order."""
    return [describe_problem(problem, top_level) for problem in error.errors()]
