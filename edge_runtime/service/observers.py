"""The observers a service is started with: the systemd link when run by systemd, the operator view when the
config turns it on. Whoever builds a Service (the `run` command, tests) hands these in."""

from __future__ import annotations

from edge_runtime.service.operator_view import OperatorView
from edge_runtime.service.service_config import ServiceConfig
from edge_runtime.service.service_observer import ServiceObserver
from edge_runtime.service.systemd_notify import SystemdNotifier, systemd_link


def standard_observers(config: ServiceConfig, notifier: SystemdNotifier | None = None) -> list[ServiceObserver]:
    """`notifier`: default from the environment ($NOTIFY_SOCKET); outside systemd no link is made."""
    observers: list[ServiceObserver] = []
    link = systemd_link(notifier)
    if link is not None:  # first: its STATUS says the model is loading before anything else starts
        observers.append(link)
    if config.operator_view.enabled:
        observers.append(OperatorView(config.operator_view))
    return observers
