"""One ConfigError and one pydantic error formatter for every config of the product, under edge_runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from edge_runtime.config_errors import ConfigError, describe_problem, describe_problems
from edge_runtime.settings import StrictModel

REPO_ROOT = Path(__file__).resolve().parents[2]


class Broker(StrictModel):
    host: str
    port: int = Field(1883, ge=1, le=65535)
    password: str | None = None
    topics: list[str] = []


class Site(StrictModel):
    broker: Broker
    name: str = "line"


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ValidationError) as error:
        Site.model_validate(raw)
    return describe_problems(error.value)


def test_problems_name_the_key_path_and_the_value():
    problems = problems_of({"broker": {"host": "b", "port": 70000, "colour": "red"}, "name": 3})
    assert problems == [
        "broker.port: Input should be less than or equal to 65535 (got 70000)",
        "broker.colour: Extra inputs are not permitted (got 'red')",
        "name: Input should be a valid string (got 3)",
    ]


def test_values_that_say_nothing_or_are_secret_are_left_out():
    assert problems_of({}) == ["broker: Field required"]
    assert problems_of({"broker": "broker.local"}) == [
        "broker: Input should be a valid dictionary or instance of Broker"
    ]
    assert problems_of({"broker": {"host": "b", "password": 1234}}) == [
        "broker.password: Input should be a valid string"
    ]
    assert problems_of({"broker": {"host": "b", "topics": {"a": 1}}}) == ["broker.topics: Input should be a valid list"]
    (long,) = problems_of({"broker": {"host": "b", "port": "x" * 200}})
    assert long.endswith("...)") and len(long.partition("(got ")[2]) == 81, "the value is cut at 80 characters"


def test_the_top_level_is_named_as_the_caller_says():
    problem = {"loc": (), "msg": "Value error, knn needs patch memory", "type": "value_error", "input": "raw"}
    assert describe_problem(problem) == "(top level): knn needs patch memory"
    assert describe_problem(problem, top_level="manifest") == "manifest: knn needs patch memory"


def test_config_error_with_problems_or_a_message():
    error = ConfigError("site.yaml", ["mode.kind: bad", "mqtt.port: bad"])
    assert str(error) == "site.yaml: mode.kind: bad; mqtt.port: bad"
    assert error.explain() == "site.yaml: 2 problem(s)\n  mode.kind: bad\n  mqtt.port: bad"
    plain = ConfigError("config file not found: site.yaml")
    assert str(plain) == plain.explain() == "config file not found: site.yaml" and plain.problems == []
    assert isinstance(plain, ValueError)


def test_the_host_and_the_device_raise_the_same_class():
    from edge_runtime.service import service_config
    from train_host import config as train_config

    assert service_config.ConfigError is ConfigError and train_config.ConfigError is ConfigError


def definitions(name: str) -> list[str]:
    """Files of the packages, tests and docs that define a function or class of this name."""
    found = []
    for path in sorted(REPO_ROOT.glob("*/**/*.py")):
        if ".venv" in path.parts or "runs" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name for n in ast.walk(tree)):
            found.append(str(path.relative_to(REPO_ROOT)))
    return found


def test_one_home_for_each_helper():
    assert definitions("ConfigError") == ["edge_runtime/config_errors.py"]
    assert definitions("free_port") == ["edge_runtime/local_ports.py"]
    assert definitions("describe_problem") == ["edge_runtime/config_errors.py"]
