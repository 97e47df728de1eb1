"""The KNN memory bank: full-width stored vectors, coreset picked in a projected space, the memory-only baseline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edge_runtime.knn import search_width
from train_host.memory_bank import greedy_coreset, selection_space, stage_maps_of


def test_selection_space_projects_only_when_asked() -> None:
    vectors = np.random.default_rng(0).standard_normal((50, 232)).astype(np.float32)
    assert selection_space(vectors, None, 0) is vectors
    assert selection_space(vectors, 64, 0).shape == (50, 64)


def test_coreset_in_projected_space_still_covers_far_clusters() -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((5, 232)).astype(np.float32) * 20
    vectors = np.concatenate([c + rng.standard_normal((200, 232)).astype(np.float32) for c in centres])
    picked = greedy_coreset(selection_space(vectors, 32, 0), 5, 0)
    assert sorted(set(picked // 200)) == [0, 1, 2, 3, 4]


def test_coreset_picks_each_time_the_vector_farthest_from_those_picked() -> None:
    from sklearn.metrics import pairwise_distances

    vectors = np.random.default_rng(2).standard_normal((300, 24)).astype(np.float32)
    picked = greedy_coreset(vectors, 12, seed=3)
    distances = pairwise_distances(vectors.astype(np.float64))
    for step in range(1, len(picked)):
        farthest = int(np.argmax(distances[:, picked[:step]].min(axis=1)))
        assert picked[step] == farthest
    assert len(set(picked)) == len(picked)


def test_memory_keeps_full_width_vectors(tiny_run) -> None:
    from train_host.run_store import load_run

    run = load_run(tiny_run)
    assert run.memory.projection is None
    stage_widths = [stage.shape[1] for stage in run.knn_backbone(torch.zeros(1, 1, 64, 64))]
    fine_count = run.config.backbone.fine_stage_count((64, 64))
    assert fine_count is not None and run.memory.coarse is not None  # the tiny config has two scales
    # Every stage value is kept; the index only adds zeros up to the width hnswlib searches fastest.
    assert run.memory.index.dim == search_width(sum(stage_widths[:fine_count]))
    assert run.memory.coarse.index.dim == search_width(sum(stage_widths[fine_count:]))
    assert run.memory.coarse.index.get_current_count() <= run.config.memory.coarse_coreset_size


def test_the_scales_are_joined_in_the_held_out_goods_typical_distances(tiny_run) -> None:
    from train_host.run_store import load_run

    run = load_run(tiny_run)
    run.memory.ordinary_distance = None  # every patch searched, as when they were measured
    fine, coarse = [], []
    for maps in stage_maps_of(run.knn_backbone, run.holdout_images(), torch.device("cpu")):
        fine_map, coarse_map = run.memory.scale_distances(maps)
        fine.append(fine_map)
        coarse.append(coarse_map)
    # Training measured them on the held-out goods and saved them with the memory.
    assert run.memory.scale_units() == pytest.approx((np.median(fine), np.median(coarse)), rel=1e-5)
    assert min(run.memory.scale_units()) > 0.0


def test_a_memory_of_one_scale_measures_its_typical_distance_too(tiny_run) -> None:
    from train_host.memory_bank import measure_typical_distances
    from train_host.run_store import load_run

    run = load_run(tiny_run)
    one_scale = dataclasses.replace(run.memory, coarse=None, typical_distance=None)
    measure_typical_distances(one_scale, run.knn_backbone, run.holdout_images(), torch.device("cpu"))
    # The same held-out patches against the same fine index: the two-scale memory's fine unit.
    assert one_scale.typical_distance == pytest.approx(run.memory.typical_distance, rel=1e-5)
    assert one_scale.scale_units() == (1.0, 1.0)  # nothing to join
    assert one_scale.ordinary_distance == pytest.approx(run.memory.ordinary_distance, rel=1e-5)


def test_the_ordinary_distance_is_what_99_percent_of_held_out_good_patches_stay_within(tiny_run) -> None:
    from train_host.run_store import load_run

    run = load_run(tiny_run)
    ordinary, run.memory.ordinary_distance = run.memory.ordinary_distance, None  # every patch searched
    fine = [
        run.memory.scale_distances(maps)[0]
        for maps in stage_maps_of(run.knn_backbone, run.holdout_images(), torch.device("cpu"))
    ]
    assert ordinary == pytest.approx(np.quantile(fine, 0.99), rel=1e-5)
    assert run.memory.coarse.ordinary_distance is None  # the coarse grid's few cells are searched in full


def test_memory_baseline_evaluates_the_knn_map_alone(tiny_config) -> None:
    from train_host.memory_baseline import evaluate_memory_only

    report = evaluate_memory_only(tiny_config)
    assert report.overall.defect_images > 0 and report.overall.good_images > 0
    assert 0.0 <= report.overall.image_auroc <= 1.0
    assert report.expected_recall is not None and 0.0 <= report.expected_recall <= 1.0
    assert report.pictures and all(picture.healed_image is None for picture in report.pictures)
