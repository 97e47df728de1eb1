import shutil

import cv2
import numpy as np
import pytest

from train_host.dataset import (
    DatasetError,
    list_test_samples,
    load_image,
    load_test_item,
    split_holdout,
    spread_subset,
    train_images,
    types_without_masks,
)


def test_reads_the_layout_with_masks(tiny_dataset):
    assert len(train_images(tiny_dataset)) == 16
    samples = list_test_samples(tiny_dataset)
    assert {s.defect_type for s in samples} == {"good", "blowhole", "crack"}
    defect = next(s for s in samples if s.is_defect)
    image, mask = load_test_item(defect, (64, 96), "gray")
    assert image.shape == (1, 64, 96) and image.min() >= -1.0 and image.max() <= 1.0
    assert mask.shape == (64, 96) and mask.dtype == bool and mask.any()
    good = next(s for s in samples if not s.is_defect)
    assert not load_test_item(good, (64, 64), "rgb")[1].any()


def test_colour_conversion_of_gray_images(tiny_dataset):
    path = train_images(tiny_dataset)[0]
    rgb = load_image(path, (32, 32), "rgb")
    assert rgb.shape == (3, 32, 32)
    np.testing.assert_allclose(rgb[0], rgb[1])


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="training folder not found"):
        train_images(tmp_path)
    with pytest.raises(DatasetError, match="test folder not found"):
        list_test_samples(tmp_path)


def test_empty_train_good(tmp_path):
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "train" / "good" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images in"):
        train_images(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="broken.png"):
        load_image(broken, (32, 32), "gray")


def test_missing_or_mismatched_mask(tiny_dataset, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(tiny_dataset, root)
    mask_folder = root / "ground_truth" / "crack"
    first_mask = sorted(mask_folder.iterdir())[0]
    cv2.imwrite(str(first_mask), np.zeros((7, 9), np.uint8))
    sample = next(s for s in list_test_samples(root) if s.mask_path == first_mask)
    with pytest.raises(DatasetError, match=r"is 9x7 but its image"):
        load_test_item(sample, (32, 32), "gray")
    first_mask.unlink()
    with pytest.raises(DatasetError, match=r"mask missing for .*crack.*\(ground_truth/crack has masks for other"):
        list_test_samples(root)


def test_a_set_without_ground_truth_is_labelled_per_image(tiny_dataset, without_masks, tmp_path):
    root = without_masks(tiny_dataset, tmp_path / "set")
    samples = list_test_samples(root)
    assert {s.defect_type for s in samples} == {"good", "blowhole", "crack"}
    assert types_without_masks(samples) == ["blowhole", "crack"]
    for sample in samples:
        image, mask = load_test_item(sample, (32, 32), "gray")
        assert image.shape == (1, 32, 32)
        assert sample.has_pixel_truth == (not sample.is_defect)
        if sample.is_defect:
            assert sample.mask_path is None and mask is None
        else:
            assert mask.shape == (32, 32) and not mask.any()


def test_masks_for_some_types_only(tiny_dataset, without_masks, tmp_path):
    root = without_masks(tiny_dataset, tmp_path / "set", keep=("blowhole",))
    samples = list_test_samples(root)
    assert types_without_masks(samples) == ["crack"]
    blowhole = [s for s in samples if s.defect_type == "blowhole"]
    assert blowhole and all(s.has_pixel_truth and s.mask_path.is_file() for s in blowhole)
    assert all(load_test_item(s, (32, 32), "gray")[1].any() for s in blowhole)
    assert all(s.mask_path is None for s in samples if s.defect_type == "crack")


def test_an_empty_mask_folder_means_no_masks(tiny_dataset, without_masks, tmp_path):
    root = without_masks(tiny_dataset, tmp_path / "set")
    (root / "ground_truth" / "crack").mkdir(parents=True)
    assert types_without_masks(list_test_samples(root)) == ["blowhole", "crack"]


def test_unreadable_mask_is_named(tiny_dataset, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(tiny_dataset, root)
    broken = sorted((root / "ground_truth" / "blowhole").iterdir())[0]
    broken.write_bytes(b"\x89PNG not a mask")
    sample = next(s for s in list_test_samples(root) if s.mask_path == broken)
    with pytest.raises(DatasetError, match=f"cannot read mask {broken}"):
        load_test_item(sample, (32, 32), "gray")


def test_holdout_split_is_deterministic_and_disjoint(tiny_dataset):
    paths = train_images(tiny_dataset)
    fit, held = split_holdout(paths, 0.25, seed=3)
    assert (fit, held) == split_holdout(paths, 0.25, seed=3)
    assert len(held) == 4 and not set(fit) & set(held) and len(fit) + len(held) == len(paths)


def test_a_capped_subset_spreads_over_the_files_instead_of_taking_the_first():
    names = [f"img_{i:03d}" for i in range(100)]
    kept = spread_subset(names, 20, seed=0)
    assert len(kept) == 20 and kept == sorted(kept) and len(set(kept)) == 20
    assert kept[-1] > "img_050"  # the second half of the names is represented
    assert spread_subset(names, 20, seed=0) == kept
    assert spread_subset(names, None, seed=0) == names and spread_subset(names, 500, seed=0) == names
