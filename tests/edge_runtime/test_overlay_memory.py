"""The feedback overlay: vectors added beside the bundle's memory, undone, capped, saved atomically, reloaded."""

import json

import numpy as np
import pytest

from edge_runtime.knn import KnnMemory, build_index, merge_nearest
from edge_runtime.overlay_memory import META_FILE, ModelIdentity, OverlayError, OverlayMemory, clear_saved

MODEL = ModelIdentity("1.0.0", "abcdef0123456789")


def _memory_and_novel(rng: np.random.Generator) -> tuple[KnnMemory, np.ndarray]:
    bank = rng.standard_normal((500, 16)).astype(np.float32)
    novel = (rng.standard_normal((40, 16)) + 6.0).astype(np.float32)  # far from every bank vector
    return KnnMemory("patch", build_index(bank, ef=64), None, neighbours=1), novel


def _distances(memory: KnnMemory, vectors: np.ndarray) -> np.ndarray:
    _, squared = memory.index.knn_query(vectors, k=memory.neighbours)
    extra = memory.extra.nearest_squared(vectors, memory.neighbours) if memory.extra else None
    return np.sqrt(merge_nearest(squared, extra, memory.neighbours)[:, 0])


def test_a_patch_distance_is_the_nearer_of_both_memories_and_undo_restores_it():
    rng = np.random.default_rng(0)
    memory, novel = _memory_and_novel(rng)
    before = _distances(memory, novel)
    overlay = OverlayMemory(MODEL, dim=16, capacity=10_000)
    memory.extra = overlay
    np.testing.assert_allclose(_distances(memory, novel), before)  # an empty overlay changes nothing

    overlay.add("fb-1", "part-1", novel)
    assert overlay.live_count() == 40
    np.testing.assert_allclose(_distances(memory, novel), 0.0, atol=1e-3)
    bank_query = rng.standard_normal((20, 16)).astype(np.float32)
    memory.extra = None
    plain = _distances(memory, bank_query)
    memory.extra = overlay
    assert np.all(_distances(memory, bank_query) <= plain + 1e-6)

    overlay.remove("fb-1")
    assert overlay.live_count() == 0
    np.testing.assert_allclose(_distances(memory, novel), before, rtol=1e-5)
    with pytest.raises(OverlayError, match="already undone"):
        overlay.remove("fb-1")
    with pytest.raises(OverlayError, match="added no vectors"):
        overlay.remove("fb-9")


def test_merge_takes_the_k_smallest_of_both_lists():
    bundle = np.array([[1.0, 4.0, 9.0]])
    extra = np.array([[0.5, 16.0]])
    np.testing.assert_allclose(merge_nearest(bundle, extra, 3), [[0.5, 1.0, 4.0]])
    np.testing.assert_allclose(merge_nearest(bundle, None, 3), bundle)


def test_the_index_grows_past_its_first_size_and_the_cap_holds():
    rng = np.random.default_rng(1)
    overlay = OverlayMemory(MODEL, dim=4, capacity=3000)
    for number in range(3):
        overlay.add(f"fb-{number}", "p", rng.standard_normal((900, 4)).astype(np.float32))
    assert overlay.live_count() == 2700 and overlay.room() == 300
    with pytest.raises(OverlayError, match="cap of 3000"):
        overlay.add("fb-3", "p", rng.standard_normal((301, 4)).astype(np.float32))
    with pytest.raises(OverlayError, match="already added"):
        overlay.add("fb-0", "p", rng.standard_normal((1, 4)).astype(np.float32))
    with pytest.raises(OverlayError, match="N x 4"):
        overlay.add("fb-4", "p", rng.standard_normal((2, 5)).astype(np.float32))
    overlay.remove("fb-1")
    overlay.add("fb-5", "p", rng.standard_normal((1200, 4)).astype(np.float32))  # undone vectors free room
    assert overlay.live_count() == 3000


def test_save_and_load_keep_vectors_undo_and_which_feedback_added_what(tmp_path):
    rng = np.random.default_rng(2)
    kept, undone = rng.standard_normal((30, 6)).astype(np.float32), rng.standard_normal((30, 6)).astype(np.float32)
    overlay = OverlayMemory(MODEL, dim=6, capacity=100)
    overlay.add("fb-a", "part-a", kept)
    overlay.add("fb-b", "part-b", undone)
    overlay.remove("fb-b")
    overlay.save(tmp_path)
    overlay.save(tmp_path)  # a second save replaces the first; one index file stays
    assert len(list(tmp_path.glob("overlay-*.hnsw"))) == 1 and not list(tmp_path.glob("*.tmp"))
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["model"] == {"model_version": "1.0.0", "model_id": "abcdef0123456789"}
    assert [(e["feedback_id"], e["part_id"], len(e["labels"]), e["deleted"]) for e in meta["entries"]] == [
        ("fb-a", "part-a", 30, False),
        ("fb-b", "part-b", 30, True),
    ]

    loaded = OverlayMemory.load(tmp_path, capacity=100)
    assert loaded is not None and loaded.model == MODEL and loaded.live_count() == 30
    np.testing.assert_allclose(loaded.nearest_squared(kept, 1), 0.0, atol=1e-4)
    assert loaded.nearest_squared(undone, 1).min() > 1e-3  # undone vectors stay undone after a restart
    loaded.add("fb-c", "part-c", rng.standard_normal((5, 6)).astype(np.float32))  # grows after loading
    assert loaded.live_count() == 35

    clear_saved(tmp_path)
    assert OverlayMemory.load(tmp_path, capacity=100) is None


def test_a_damaged_overlay_file_is_reported_by_name(tmp_path):
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(OverlayError, match="overlay.json cannot be read"):
        OverlayMemory.load(tmp_path, capacity=10)
