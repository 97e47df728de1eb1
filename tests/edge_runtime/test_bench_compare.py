"""`bench` (full and memory-only) on the tiny bundle, then `bench-compare` over what it wrote."""

import json

import pytest

from edge_runtime.__main__ import main
from edge_runtime.bench_compare import compare_reports, read_run


@pytest.fixture(scope="module")
def reports(slot, tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    common = ["--slot", str(slot), "--images", str(tiny_dataset / "test"), "--frames", "4"]
    assert main(["bench", *common, "--steps", "1", "2", "--no-throughput", "--out", str(folder / "full.json")]) == 0
    assert main(["bench", *common, "--memory-only", "--out", str(folder / "memory.json")]) == 0
    return folder / "full.json", folder / "memory.json"


def test_memory_only_runs_no_reconstruction(reports):
    memory = json.loads(reports[1].read_text())
    assert "memory only" in memory["label"] and [run["steps"] for run in memory["runs"]] == [0]
    stages = set(memory["runs"][0]["stages"])
    assert "knn" in stages and not stages & {"encode", "denoise", "decode", "feature_maps"}
    assert memory["peak_rss_latency_mb"] > 0


def test_compare_table_has_the_ratio_against_memory_only(reports):
    full, memory = read_run(reports[0], 2), read_run(reports[1], 2)
    table = compare_reports(list(reports), 2)
    added = (full.latency.p50_ms - memory.latency.p50_ms) / memory.latency.p50_ms
    full_row = next(line for line in table.splitlines() if line.startswith(f"| {full.label} |"))
    assert full_row.rstrip(" |").endswith(f"{added:.1f}x")
    assert "| denoise |" in table and table.count("\n| ") >= 3


def test_compare_names_a_missing_step_count(reports):
    with pytest.raises(ValueError, match="no run with 8 steps"):
        read_run(reports[0], 8)
