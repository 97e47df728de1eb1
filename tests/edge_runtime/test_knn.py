import json

import numpy as np
import pytest

from edge_runtime.knn import KnnMemory, build_index, image_vector, join_scales, patch_vectors


def test_hnsw_finds_true_nearest_neighbours():
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    memory = KnnMemory(mode="patch", index=build_index(bank, ef=64), projection=None, neighbours=1)
    _, squared = memory.index.knn_query(queries, k=1)
    brute = np.sqrt(((queries[:, None, :] - bank[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(np.sqrt(squared[:, 0]), brute, rtol=1e-4)


def test_patch_severity_map_and_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    stages = [rng.standard_normal((6, 8, 8)).astype(np.float32), rng.standard_normal((10, 4, 4)).astype(np.float32)]
    vectors, grid = patch_vectors(stages)
    assert vectors.shape == (64, 16) and grid == (8, 8)
    projection = rng.standard_normal((16, 8)).astype(np.float32)
    memory = KnnMemory("patch", build_index(vectors @ projection), projection, neighbours=1)
    severity = memory.severity(stages)
    assert severity.patch_map.shape == (8, 8)
    np.testing.assert_allclose(severity.patch_map, 0.0, atol=1e-3)  # the image is its own memory
    memory.save(tmp_path)
    loaded = KnnMemory.load(tmp_path)
    shifted = [s + 1.0 for s in stages]
    assert loaded.severity(shifted).distance == memory.severity(shifted).distance > 0.1


def test_image_vector_pools_each_stage_to_16x16():
    stages = [np.ones((3, 32, 32), np.float32), np.ones((5, 16, 16), np.float32)]
    assert image_vector(stages).shape == (1, (3 + 5) * 16 * 16)


def context_of(stage_map: np.ndarray) -> np.ndarray:
    """The patch vectors of one stage with their 3x3 context, back as a CxHxW map."""
    vectors, grid = patch_vectors([stage_map])
    return vectors.reshape(*grid, len(stage_map)).transpose(2, 0, 1)


def test_the_patch_context_is_the_3x3_mean_with_repeated_edges():
    # 300 channels: more than OpenCV filters in one call (the stride-32 stage alone has 192).
    stage_map = np.random.default_rng(4).standard_normal((300, 7, 9)).astype(np.float32)
    padded = np.pad(stage_map, ((0, 0), (1, 1), (1, 1)), mode="edge")
    expected = sum(padded[:, dy : dy + 7, dx : dx + 9] for dy in range(3) for dx in range(3)) / 9.0
    np.testing.assert_allclose(context_of(stage_map), expected, atol=1e-5)
    single = stage_map[:1]
    np.testing.assert_allclose(context_of(single), expected[:1], atol=1e-5)


def test_search_threads_do_not_change_distances():
    rng = np.random.default_rng(5)
    memory = KnnMemory("patch", build_index(rng.standard_normal((3000, 24)).astype(np.float32)), None, 1)
    queries = rng.standard_normal((500, 24)).astype(np.float32)
    one_thread = memory.distances(queries)
    memory.query_threads = 2
    np.testing.assert_array_equal(memory.distances(queries), one_thread)


def test_patch_vectors_of_wide_stages_match_channel_by_channel():
    rng = np.random.default_rng(8)
    fine, wide = rng.standard_normal((4, 8, 8)).astype(np.float32), rng.standard_normal((200, 2, 2)).astype(np.float32)
    vectors, grid = patch_vectors([fine, wide])
    assert grid == (8, 8) and vectors.shape == (64, 204)
    for channel in (0, 127, 128, 199):  # both sides of OpenCV's channel limit
        alone, _ = patch_vectors([fine, wide[channel : channel + 1]])
        np.testing.assert_allclose(vectors[:, 4 + channel], alone[:, 4], atol=1e-6)


def test_patch_vectors_padded_to_a_width_only_add_zero_columns():
    rng = np.random.default_rng(9)
    stages = [rng.standard_normal((6, 8, 8)).astype(np.float32), rng.standard_normal((150, 4, 4)).astype(np.float32)]
    plain, grid = patch_vectors(stages)
    padded, padded_grid = patch_vectors(stages, width=160)
    assert padded_grid == grid and plain.shape == (64, 156) and padded.shape == (64, 160)
    np.testing.assert_array_equal(padded[:, :156], plain)
    assert not padded[:, 156:].any()
    memory = KnnMemory("patch", build_index(plain), None, 1)  # stored padded to 160, a multiple of 16
    vectors, _ = memory.describe(stages)
    np.testing.assert_array_equal(vectors, padded)


def two_scale_memory(rng: np.random.Generator, fine_stages: list, coarse_stages: list) -> KnnMemory:
    """A memory of one image at two scales: the fine stages on their grid, the coarse one on its own."""
    fine_vectors, _ = patch_vectors(fine_stages)
    coarse_vectors, _ = patch_vectors(coarse_stages, context=False)
    coarse = KnnMemory("patch", build_index(coarse_vectors), None, 1, context=False)
    return KnnMemory("patch", build_index(fine_vectors), None, 1, stage_count=len(fine_stages), coarse=coarse)


def test_two_scales_are_searched_apart_and_joined_on_the_fine_grid(tmp_path):
    rng = np.random.default_rng(11)
    fine = [rng.standard_normal((6, 8, 8)).astype(np.float32)]
    coarse = [rng.standard_normal((10, 2, 2)).astype(np.float32)]
    memory = two_scale_memory(rng, fine, coarse)
    np.testing.assert_allclose(memory.severity(fine + coarse).patch_map, 0.0, atol=1e-3)
    # Only the coarse stage changes: the fine map alone would see nothing, the joined map sees it everywhere.
    changed = memory.severity(fine + [coarse[0] + 1.0])
    assert changed.patch_map.shape == (8, 8) and changed.patch_map.min() > 1.0
    expected = join_scales(np.zeros((8, 8), np.float32), np.full((2, 2), np.sqrt(10.0), np.float32))
    np.testing.assert_allclose(changed.patch_map, expected, rtol=1e-3)
    memory.save(tmp_path)
    loaded = KnnMemory.load(tmp_path)
    assert loaded.coarse is not None and loaded.coarse.context is False and loaded.stage_count == 1
    assert loaded.severity(fine + [coarse[0] + 1.0]).distance == changed.distance
    loaded.use_threads(2)
    assert [scale.query_threads for scale in loaded.scales()] == [2, 2]


def test_join_scales_is_the_root_of_the_summed_squares():
    fine = np.array([[3.0, 0.0], [0.0, 1.0]], np.float32)
    coarse = np.full((1, 1), 4.0, np.float32)
    np.testing.assert_allclose(join_scales(fine, coarse), [[5.0, 4.0], [4.0, np.sqrt(17.0)]], rtol=1e-6)
    # In units of each scale's typical distance: 3 / 1.5 and 4 / 2 give sqrt(4 + 4).
    halved = join_scales(fine, coarse, fine_unit=1.5, coarse_unit=2.0)
    np.testing.assert_allclose(halved[0, 0], np.sqrt(8.0), rtol=1e-6)


def test_scales_with_typical_distances_are_joined_in_them_and_keep_them_when_saved(tmp_path):
    rng = np.random.default_rng(13)
    fine = [rng.standard_normal((6, 8, 8)).astype(np.float32)]
    coarse = [rng.standard_normal((10, 2, 2)).astype(np.float32)]
    memory = two_scale_memory(rng, fine, coarse)
    shifted = [fine[0] + 0.5, coarse[0] + 1.0]
    plain = memory.severity(shifted).patch_map
    assert memory.scale_units() == (1.0, 1.0)
    memory.coarse.typical_distance = 2.0  # one scale measured is not enough: still joined unscaled
    np.testing.assert_array_equal(memory.severity(shifted).patch_map, plain)
    memory.typical_distance = 0.5
    expected = join_scales(*memory.scale_distances(shifted), 0.5, 2.0)
    np.testing.assert_allclose(memory.severity(shifted).patch_map, expected, rtol=1e-6)
    assert not np.allclose(expected, plain)
    memory.save(tmp_path)
    loaded = KnnMemory.load(tmp_path)
    assert loaded.scale_units() == (0.5, 2.0)
    np.testing.assert_allclose(loaded.severity(shifted).patch_map, expected, rtol=1e-6)
    meta = json.loads((tmp_path / "memory.json").read_text())
    (tmp_path / "memory.json").write_text(json.dumps({**meta, "typical_distance": -1.0}))
    with pytest.raises(ValueError, match="typical_distance must be a positive number, got -1.0"):
        KnnMemory.load(tmp_path)


def test_a_memory_saved_before_the_coarse_scale_loads_as_one_scale(tmp_path):
    rng = np.random.default_rng(12)
    stages = [rng.standard_normal((6, 8, 8)).astype(np.float32)]
    KnnMemory("patch", build_index(patch_vectors(stages)[0]), None, 1).save(tmp_path)
    meta = json.loads((tmp_path / "memory.json").read_text())
    for key in ("stage_count", "context", "coarse"):
        del meta[key]
    (tmp_path / "memory.json").write_text(json.dumps(meta))
    loaded = KnnMemory.load(tmp_path)
    assert loaded.coarse is None and loaded.stage_count is None and loaded.context is True
    np.testing.assert_allclose(loaded.severity(stages).patch_map, 0.0, atol=1e-3)


def test_vectors_are_searched_zero_padded_to_a_multiple_of_16_with_the_same_distances():
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((1500, 20)).astype(np.float32)
    queries = rng.standard_normal((40, 20)).astype(np.float32)
    memory = KnnMemory("patch", build_index(bank, ef=64), None, neighbours=1)
    assert memory.index.dim == 32
    brute = np.sqrt(((queries[:, None, :] - bank[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(memory.distances(queries), brute, rtol=1e-4)
    stages = [bank[:64].T.reshape(20, 8, 8).copy()]
    vectors, _ = memory.describe(stages)
    assert vectors.shape == (64, 32) and not vectors[:, 20:].any()


def sparse_test_memory(rng: np.random.Generator) -> tuple[KnnMemory, np.ndarray, np.ndarray]:
    """A memory of 400 random vectors, a 12 x 10 grid of queries close to stored ones, and the same grid with two
    far-off 2 x 2 blocks (every patch of a block has a neighbour inside it on the other colour of a checkerboard)."""
    stored = rng.standard_normal((400, 24)).astype(np.float32)
    memory = KnnMemory("patch", build_index(stored, ef=64), None, 1)
    near = stored[rng.choice(400, 120)] + rng.normal(0, 0.05, (120, 24)).astype(np.float32)
    with_defects = near.reshape(12, 10, 24).copy()
    with_defects[2:4, 3:5] += 6.0
    with_defects[9:11, 8:10] += 6.0
    return memory, near, with_defects.reshape(120, 24)


def test_a_sparse_search_finds_every_patch_beyond_the_ordinary_distance_and_searches_less():
    memory, near, with_defects = sparse_test_memory(np.random.default_rng(21))
    exact = memory.distances(with_defects).reshape(12, 10)
    memory.ordinary_distance = 1.0  # the near patches lie at about 0.25, the defects at about 29
    searched: list[int] = []
    search = memory.distances
    memory.distances = lambda vectors: searched.append(len(vectors)) or search(vectors)  # count the queries

    sparse = memory.sparse_distances(with_defects, (12, 10))
    defect = exact > memory.ordinary_distance
    assert defect.sum() == 8
    np.testing.assert_array_equal(sparse[defect], exact[defect])  # searched, not estimated
    assert sparse[~defect].max() <= memory.ordinary_distance
    assert sum(searched) < 120 * 0.6  # half on the checkerboard, then only the defects' neighbours
    searched.clear()
    quiet = memory.sparse_distances(near, (12, 10))
    assert sum(searched) == 60 and quiet.max() <= memory.ordinary_distance


def test_the_ordinary_distance_is_saved_and_checked_when_loaded(tmp_path):
    memory, _, _ = sparse_test_memory(np.random.default_rng(22))
    memory.ordinary_distance = 1.5
    memory.save(tmp_path)
    assert KnnMemory.load(tmp_path).ordinary_distance == 1.5
    meta = json.loads((tmp_path / "memory.json").read_text())
    for bad in (0.0, "far", float("nan")):
        (tmp_path / "memory.json").write_text(json.dumps({**meta, "ordinary_distance": bad}))
        with pytest.raises(ValueError, match="ordinary_distance must be a positive number"):
            KnnMemory.load(tmp_path)
    (tmp_path / "memory.json").write_text(json.dumps({**meta, "mode": "image"}))
    with pytest.raises(ValueError, match="ordinary_distance applies to a patch memory, not mode 'image'"):
        KnnMemory.load(tmp_path)
