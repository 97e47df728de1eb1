"""The soak's checks on made-up records: each passes on a clean record and fails on the fault it looks for."""

import json

import pytest

from demo_line.soak_report import BootEnd, PartId, Received, boot_figures, group_by_boot, run_checks

RESULT, STATS, DEVICE = "f/soak/result", "f/soak/stats", "soak"


def result(at_s: float, boot: str, counter: int) -> Received:
    return Received(at_s, RESULT, json.dumps({"part_id": f"{DEVICE}-{boot}-{counter}"}).encode())


def stats(at_s: float, boot: str, inspected: int) -> Received:
    return Received(at_s, STATS, json.dumps({"boot_id": boot, "inspected": inspected}).encode())


def checks_of(messages: list[Received], ends: dict[str, BootEnd], boots: int = 1) -> dict[str, bool]:
    records = group_by_boot(messages, RESULT, STATS, DEVICE)
    figures = [boot_figures(record, ends.get(boot_id)) for boot_id, record in records.items()]
    return {check.name: check.passed for check in run_checks(figures, boots, [])}


def clean_run(counters: range, boot: str = "b1") -> list[Received]:
    return [result(n, boot, n) for n in counters] + [stats(100, boot, counters[-1]), stats(102, boot, counters[-1])]


def test_a_clean_run_passes_every_check():
    assert all(checks_of(clean_run(range(1, 11)), {"b1": BootEnd("b1", "stopped", 103)}).values())


@pytest.mark.parametrize(
    ("fault", "failing"),
    [
        (lambda m: [x for x in m if b"-b1-4" not in x.payload], {"no_gaps", "results_equal_inspected"}),
        (lambda m: m + [result(50, "b1", 3)], {"no_duplicates"}),
        (lambda m: [m[1], m[0], *m[2:]], {"in_order"}),
        (lambda m: [*m[:-1], stats(102, "b1", 12)], {"results_equal_inspected"}),
    ],
    ids=["lost result", "repeated result", "reordered", "more inspected than delivered"],
)
def test_each_fault_fails_its_check(fault, failing):
    checks = checks_of(fault(clean_run(range(1, 11))), {"b1": BootEnd("b1", "stopped", 103)})
    assert {name for name, passed in checks.items() if not passed} == failing


def test_a_killed_process_counts_what_it_left_in_its_outbox():
    # Stats said 5, results up to 7 arrived before the kill and 8 and 9 were in the outbox: 9 inspected.
    messages = [stats(4.5, "b1", 5)] + [result(n, "b1", n) for n in range(1, 8)]
    messages += [result(20 + n, "b1", n) for n in (8, 9)] + clean_run(range(1, 4), "b2")
    ends = {"b1": BootEnd("b1", "killed", 8.0, (8, 9)), "b2": BootEnd("b2", "stopped", 103)}
    assert all(checks_of(messages, ends, boots=2).values())
    lost = [m for m in messages if b"-b1-9" not in m.payload]
    checks = checks_of(lost, ends, boots=2)
    assert not checks["outbox_delivered_after_kill"] and not checks["results_equal_inspected"]


def test_part_ids_that_are_not_the_continuous_modes_are_refused():
    assert PartId.parse("soak-6b12fd-17", DEVICE) == PartId("6b12fd", 17)
    with pytest.raises(ValueError, match="is not soak-<boot_id>-<n>"):
        PartId.parse("other-6b12fd-17", DEVICE)
