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
    train_images,
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
    with pytest.raises(DatasetError, match="mask missing"):
        list_test_samples(root)


def test_holdout_split_is_deterministic_and_disjoint(tiny_dataset):
    paths = train_images(tiny_dataset)
    fit, held = split_holdout(paths, 0.25, seed=3)
    assert (fit, held) == split_holdout(paths, 0.25, seed=3)
    assert len(held) == 4 and not set(fit) & set(held) and len(fit) + len(held) == len(paths)
