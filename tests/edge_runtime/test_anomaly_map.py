import numpy as np
import pytest

from edge_runtime.anomaly_map import (
    MapStats,
    cosine_distance_map,
    feature_map,
    fuse_maps,
    image_score,
    image_scores,
    latent_map,
)


def test_cosine_distance_is_zero_for_identical_and_two_for_opposite():
    features = np.random.default_rng(0).standard_normal((8, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(cosine_distance_map(features, features), 0.0, atol=1e-6)
    np.testing.assert_allclose(cosine_distance_map(features, -features), 2.0, atol=1e-6)


def test_latent_map_is_mean_abs_difference_upsampled():
    latent = np.zeros((4, 2, 2), dtype=np.float32)
    healed = np.full((4, 2, 2), 0.5, dtype=np.float32)
    result = latent_map(latent, healed, (16, 16))
    assert result.shape == (16, 16)
    np.testing.assert_allclose(result, 0.5, atol=1e-6)


def test_feature_map_sums_stages():
    first = [np.ones((3, 4, 4), np.float32), np.ones((3, 2, 2), np.float32)]
    second = [-np.ones((3, 4, 4), np.float32), np.ones((3, 2, 2), np.float32)]
    np.testing.assert_allclose(feature_map(first, second, (8, 8)), 2.0, atol=1e-6)


def test_map_stats_normalise_median_to_zero_and_quantile_to_one():
    values = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
    stats = MapStats.fit(values, quantile=0.99, band_width=0)
    assert stats.normalise(np.full((1, 1), 50.0, np.float32))[0, 0] == pytest.approx(0.0)
    assert stats.normalise(np.full((1, 1), 99.0, np.float32))[0, 0] == pytest.approx(1.0)


def test_edge_bands_are_measured_apart_so_a_noisy_edge_does_not_outscore_the_interior():
    rng = np.random.default_rng(0)
    goods = rng.normal(1.0, 0.1, (20, 32, 32)).astype(np.float32)
    goods[:, :, :4] += rng.normal(3.0, 1.0, (20, 32, 4)).astype(np.float32)  # an unsteady left edge
    stats = MapStats.fit(goods, quantile=0.99, band_width=4)
    assert len(stats.scale) == 4 and stats.scale[0] > 5 * stats.scale[1]

    good = rng.normal(1.0, 0.1, (32, 32)).astype(np.float32)
    good[:, :4] += 5.0  # a high but ordinary edge
    defect = good.copy()
    defect[14:18, 14:18] += 1.0  # a small bright spot inside
    assert stats.normalise(defect).max() > stats.normalise(good).max()
    flat = MapStats.fit(goods, quantile=0.99, band_width=0)
    assert flat.normalise(defect).max() == pytest.approx(flat.normalise(good).max())  # the edge hides it


def test_fuse_weights_normalised_maps():
    maps = {"latent": np.full((4, 4), 3.0), "feature": np.full((4, 4), 5.0), "knn": np.full((4, 4), 100.0)}
    stats = {"latent": MapStats((1.0,), (2.0,)), "feature": MapStats((1.0,), (4.0,)), "knn": MapStats((0.0,), (1.0,))}
    fused = fuse_maps(maps, stats, {"latent": 0.85, "feature": 0.15, "knn": 0.0}, 0, "capped")
    np.testing.assert_allclose(fused, 0.85 * 1.0 + 0.15 * 1.0)
    with pytest.raises(ValueError, match="at least one map weight"):
        fuse_maps(maps, stats, {"latent": 0.0, "feature": 0.0, "knn": 0.0}, 0, "capped")


def test_capped_fusion_lets_healing_add_only_where_the_memory_sees_something():
    stats = {kind: MapStats((0.0,), (1.0,)) for kind in ("latent", "knn")}
    knn = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    latent = np.array([[3.0, 3.0, 3.0, 1.0]], np.float32)
    weights = {"latent": 0.5, "knn": 1.0}
    maps = {"latent": latent, "knn": knn}
    capped = fuse_maps(maps, stats, weights, 0, "capped")
    # The healing's difference adds at most the memory's own (non-negative) evidence at that pixel.
    np.testing.assert_allclose(capped, knn + 0.5 * np.array([[0.0, 0.0, 0.5, 1.0]]))
    np.testing.assert_allclose(fuse_maps(maps, stats, weights, 0, "sum"), knn + 0.5 * latent)
    below = {"latent": -latent, "knn": knn}  # a healed image closer than usual still lowers the map
    np.testing.assert_allclose(
        fuse_maps(below, stats, weights, 0, "capped"), fuse_maps(below, stats, weights, 0, "sum")
    )
    # Without a KNN map fused there is nothing to cap by: the maps are summed.
    alone = {"latent": 0.85, "feature": 0.0, "knn": 0.0}
    np.testing.assert_allclose(fuse_maps(maps, stats, alone, 0, "capped"), fuse_maps(maps, stats, alone, 0, "sum"))


def test_image_score_is_the_mean_of_the_highest_pixels_or_the_maximum() -> None:
    maps = np.random.default_rng(3).normal(size=(5, 40, 50)).astype(np.float32)
    by_sorting = np.sort(maps.reshape(5, -1), axis=1)[:, -20:].mean(axis=1)  # 1 % of 2,000 pixels
    np.testing.assert_allclose(image_scores(maps, 0.01), by_sorting, rtol=1e-6)
    np.testing.assert_array_equal(image_scores(maps, 0.0), maps.reshape(5, -1).max(axis=1))
    np.testing.assert_array_equal(image_scores(maps, 1e-5), maps.reshape(5, -1).max(axis=1))  # under one pixel
    assert image_score(maps[2], 0.01) == pytest.approx(by_sorting[2])
    # A small bright spot lifts the score above a map that is uniformly a little higher.
    spot, flat = np.zeros((100, 100), np.float32), np.full((100, 100), 0.5, np.float32)
    spot[:10, :10] = 3.0
    assert image_score(spot, 0.01) > image_score(flat, 0.01)
