"""What a soak run checks, from what its collector received: every result once, in order, none missing, and
as many results as the device inspected. Pure functions over recorded messages, so each check can be shown
to fail on a made-up record as well as to pass on a real run."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

EndKind = Literal["killed", "stopped", "running"]


@dataclass(frozen=True)
class Received:
    """One message as the collector got it."""

    at_s: float  # seconds since the soak started streaming (may be negative during start-up)
    topic: str
    payload: bytes
    redelivered: bool = False  # the broker's DUP flag


@dataclass(frozen=True)
class PartId:
    boot_id: str
    counter: int

    @classmethod
    def parse(cls, part_id: str, device_id: str) -> PartId:
        """`<device_id>-<boot_id>-<n>` (the continuous mode's part ids); ValueError for anything else."""
        head = f"{device_id}-"
        boot, sep, counter = part_id.removeprefix(head).rpartition("-")
        if not part_id.startswith(head) or not sep or not boot or not counter.isdigit():
            raise ValueError(f"part id {part_id!r} is not {device_id}-<boot_id>-<n>")
        return cls(boot, int(counter))


@dataclass(frozen=True)
class BootEnd:
    """How one service process ended, and what its outbox held right after a kill."""

    boot_id: str
    kind: EndKind
    at_s: float
    outbox_counters: tuple[int, ...] = ()  # this boot's part counters left in the outbox by the kill


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class BootFigures:
    boot_id: str
    ended: EndKind
    results_received: int  # messages, repeats included
    results_distinct: int
    highest_counter: int
    missing_counters: list[int]  # the first 20
    missing_count: int
    repeated_part_ids: int
    out_of_order: int  # first arrivals whose counter is not above the one before
    stats_messages: int
    last_stats_inspected: int | None
    inspected: int | None  # frames inspected by this process, as defined in `inspected_count`
    inspected_after_last_stats: int | None
    outbox_rows_at_kill: int
    outbox_rows_at_kill_received: int
    frames_in: int | None
    dropped_frames: int | None
    errors: int | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None


@dataclass
class SoakFigures:
    """Counts over the whole run; `results_per_s` over the streaming time (kill and restart included)."""

    streaming_s: float
    results_distinct: int
    results_received: int
    frames_inspected: int
    results_per_s: float
    repeats: int
    service_peak_rss_mb: float | None = None  # the largest of every boot's peak resident set


@dataclass
class SoakReport:
    command: str
    started_utc: str
    machine: str
    options: dict
    figures: SoakFigures
    boots: list[BootFigures]
    outages: list[dict]
    kills: list[dict]
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_json(self) -> str:
        return json.dumps({"passed": self.passed, **asdict(self)}, indent=2, default=str)


# --- grouping what arrived ------------------------------------------------------------------------------


@dataclass
class BootRecord:
    """Results (arrival order) and stats of one process, as received."""

    boot_id: str
    results: list[tuple[float, int, bytes]] = field(default_factory=list)  # (at_s, counter, payload)
    stats: list[dict] = field(default_factory=list)


def group_by_boot(messages: list[Received], result_topic: str, stats_topic: str, device_id: str) -> dict:
    """Results and stats of each boot, in arrival order. A result without a continuous-mode part id is a
    failure of the soak's premise: raised, not skipped."""
    boots: dict[str, BootRecord] = {}
    for message in messages:
        if message.topic == result_topic:
            part = PartId.parse(json.loads(message.payload)["part_id"], device_id)
            record = boots.setdefault(part.boot_id, BootRecord(part.boot_id))
            record.results.append((message.at_s, part.counter, message.payload))
        elif message.topic == stats_topic and message.payload:
            stats = json.loads(message.payload)
            boots.setdefault(stats["boot_id"], BootRecord(stats["boot_id"])).stats.append(stats)
    return boots


def first_arrivals(record: BootRecord) -> list[int]:
    seen: set[int] = set()
    order = []
    for _, counter, _ in record.results:
        if counter not in seen:
            seen.add(counter)
            order.append(counter)
    return order


def out_of_order(counters: list[int]) -> int:
    return sum(1 for before, after in zip(counters, counters[1:], strict=False) if after <= before)


def inspected_count(record: BootRecord, end: BootEnd | None) -> int | None:
    """Frames this process inspected. Every inspection writes one result to the outbox before it is counted
    in `stats.inspected`, and part counters run 1, 2, ... per process, so:

    - a process stopped after `cmd/pause` reported its final count in its last stats: that figure, exactly;
    - a process killed between two stats reports inspected more than its last report says. What it made
      after that report is known from what it left behind: the highest counter in its outbox right after
      the kill, and the highest counter of the results it delivered before dying. The count is the largest
      of these three. A result lost at the kill lowers the received count below it; it cannot raise it.
    """
    last = record.stats[-1]["inspected"] if record.stats else None
    if end is None or end.kind != "killed":
        return last
    before_kill = [counter for at_s, counter, _ in record.results if at_s <= end.at_s]
    candidates = [c for c in (last, max(before_kill, default=None), max(end.outbox_counters, default=None)) if c]
    return max(candidates, default=0)


def boot_figures(record: BootRecord, end: BootEnd | None) -> BootFigures:
    counters = [counter for _, counter, _ in record.results]
    distinct = set(counters)
    highest = max(distinct, default=0)
    missing = sorted(set(range(1, highest + 1)) - distinct)
    last = record.stats[-1] if record.stats else {}
    inspected = inspected_count(record, end)
    kill_rows = set(end.outbox_counters) if end is not None else set()
    latency = last.get("latency_ms") or {}
    return BootFigures(
        boot_id=record.boot_id,
        ended=end.kind if end is not None else "running",
        results_received=len(counters),
        results_distinct=len(distinct),
        highest_counter=highest,
        missing_counters=missing[:20],
        missing_count=len(missing),
        repeated_part_ids=sum(1 for n in Counter(counters).values() if n > 1),
        out_of_order=out_of_order(first_arrivals(record)),
        stats_messages=len(record.stats),
        last_stats_inspected=last.get("inspected"),
        inspected=inspected,
        inspected_after_last_stats=None if inspected is None else inspected - last.get("inspected", 0),
        outbox_rows_at_kill=len(kill_rows),
        outbox_rows_at_kill_received=len(kill_rows & distinct),
        frames_in=last.get("frames_in"),
        dropped_frames=last.get("dropped"),
        errors=last.get("errors"),
        latency_p50_ms=latency.get("p50"),
        latency_p99_ms=latency.get("p99"),
    )


# --- the checks ------------------------------------------------------------------------------------------


def check_boots(boots: list[BootFigures], expected: int) -> Check:
    with_results = [b.boot_id for b in boots if b.results_distinct]
    passed = len(boots) == expected and len(with_results) == expected
    detail = f"{len(with_results)} process(es) delivered results ({', '.join(with_results)}); expected {expected}"
    return Check("every_process_delivered", passed, detail)


def check_no_gaps(boots: list[BootFigures]) -> Check:
    gaps = {b.boot_id: b.missing_counters for b in boots if b.missing_count}
    detail = "; ".join(f"boot {k}: missing {v}" for k, v in gaps.items()) or "every counter 1..n arrived in each boot"
    return Check("no_gaps", not gaps, detail)


def check_no_duplicates(boots: list[BootFigures]) -> Check:
    repeated = {b.boot_id: b.repeated_part_ids for b in boots if b.repeated_part_ids}
    total = sum(b.results_received - b.results_distinct for b in boots)
    detail = f"{total} repeated deliveries" + "".join(f"; boot {k}: {v} part ids" for k, v in repeated.items())
    return Check("no_duplicates", not repeated, detail if repeated else "every part id arrived exactly once")


def check_order(boots: list[BootFigures]) -> Check:
    bad = {b.boot_id: b.out_of_order for b in boots if b.out_of_order}
    detail = "; ".join(f"boot {k}: {v} results arrived after a later one" for k, v in bad.items())
    return Check("in_order", not bad, detail or "each boot's results arrived in counter order")


def check_counts(boots: list[BootFigures]) -> Check:
    wrong = []
    for boot in boots:
        if boot.inspected is None:
            wrong.append(f"boot {boot.boot_id}: no stats received, so no inspected count")
        elif boot.results_distinct != boot.inspected:
            wrong.append(f"boot {boot.boot_id}: {boot.results_distinct} results for {boot.inspected} inspected")
    results = sum(b.results_distinct for b in boots)
    inspected = sum(b.inspected or 0 for b in boots)
    detail = "; ".join(wrong) or f"{results} results for {inspected} frames inspected"
    return Check("results_equal_inspected", not wrong, detail)


def check_backlog(boots: list[BootFigures]) -> Check:
    killed = [b for b in boots if b.ended == "killed"]
    short = [b for b in killed if b.outbox_rows_at_kill_received != b.outbox_rows_at_kill]
    detail = "; ".join(
        f"boot {b.boot_id}: {b.outbox_rows_at_kill_received} of {b.outbox_rows_at_kill} outbox rows arrived"
        for b in killed
    )
    return Check("outbox_delivered_after_kill", not short, detail or "no process was killed")


def run_checks(boots: list[BootFigures], expected_boots: int, extra: list[Check]) -> list[Check]:
    checks = [
        check_boots(boots, expected_boots),
        check_no_gaps(boots),
        check_no_duplicates(boots),
        check_order(boots),
        check_counts(boots),
        check_backlog(boots),
    ]
    return checks + extra
