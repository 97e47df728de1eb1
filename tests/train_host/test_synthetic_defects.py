"""Synthetic defects on real good images, and the recall estimate made from them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from train_host import synthetic_defects
from train_host.dataset import load_image, train_images
from train_host.synthetic_defects import make_synthetic_defects


@pytest.fixture(scope="module")
def good_images(tiny_dataset) -> np.ndarray:
    return np.stack([load_image(path, (64, 64), "gray") for path in train_images(tiny_dataset)[:6]])


def test_defects_change_the_image_inside_their_mask_only(good_images) -> None:
    defective, masks = make_synthetic_defects(good_images, seed=3)
    assert defective.shape == good_images.shape and masks.shape == (len(good_images), 64, 64)
    assert defective.dtype == np.float32 and defective.min() >= -1.0 and defective.max() <= 1.0
    for image, changed, mask in zip(good_images, defective, masks, strict=True):
        difference = np.abs(changed - image).max(axis=0)
        assert mask.any(), "every defect has a mask"
        assert difference[mask].mean() > 0.05, "the masked area really changes"
        assert np.all(difference[~mask] == 0.0), "nothing changes outside the mask"


def test_defects_follow_the_seed(good_images) -> None:
    first, first_masks = make_synthetic_defects(good_images, seed=5)
    again, again_masks = make_synthetic_defects(good_images, seed=5)
    other, _ = make_synthetic_defects(good_images, seed=6)
    assert np.array_equal(first, again) and np.array_equal(first_masks, again_masks)
    assert not np.array_equal(first, other)


def test_the_kinds_take_turns_from_the_first_kind(good_images, monkeypatch) -> None:
    painted: list[str] = []
    for name in ("paste_blob", "paste_patch", "draw_scratch"):
        original = getattr(synthetic_defects, name)

        def recorded(*args, _original=original, _name=name):
            painted.append(_name)
            return _original(*args)

        monkeypatch.setattr(synthetic_defects, name, recorded)
    make_synthetic_defects(good_images[:4], seed=0)
    assert painted == ["paste_blob", "paste_patch", "draw_scratch", "paste_blob"]
    painted.clear()
    make_synthetic_defects(good_images[:4], seed=0, first_kind=2)
    assert painted == ["draw_scratch", "paste_blob", "paste_patch", "draw_scratch"]


def test_a_batch_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="N x C x H x W"):
        make_synthetic_defects(np.zeros((64, 64), dtype=np.float32), seed=0)


def test_synthetic_recall_follows_the_threshold(tiny_run, good_images) -> None:
    from train_host.calibrate import synthetic_recall
    from train_host.run_store import build_pipeline, load_run
    from train_host.torch_setup import pick_device

    run = load_run(tiny_run)
    pipeline = build_pipeline(run, run.config.inspection, pick_device("cpu"))
    everything = dataclasses.replace(run.calibration, image_threshold=-np.inf)
    nothing = dataclasses.replace(run.calibration, image_threshold=np.inf)
    assert synthetic_recall(pipeline, everything, good_images, seed=0) == 1.0
    assert synthetic_recall(pipeline, nothing, good_images, seed=0) == 0.0
    stored = synthetic_recall(pipeline, run.calibration, good_images, seed=0)
    assert 0.0 <= stored <= 1.0
