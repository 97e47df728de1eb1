"""The synthetic part set: readable as a dataset, masks on the drawn defects, the same set for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from train_host.dataset import list_test_samples, load_test_item, read_image, split_holdout, train_images
from train_host.synthetic_parts import (
    DEFECT_TYPES,
    SyntheticSetSpec,
    add_defect,
    part_rng,
    render_surface,
    to_pixels,
    write_synthetic_set,
)

SMALL = SyntheticSetSpec(train_good=6, test_good=2, test_per_defect=3, size=(64, 96), seed=3)


def test_written_set_reads_as_an_mvtec_layout_dataset(tmp_path):
    root = write_synthetic_set(tmp_path / "parts", SMALL)
    assert len(train_images(root)) == 6
    fit, held = split_holdout(train_images(root), 0.25, 0)
    assert fit and held
    samples = list_test_samples(root)
    counts = {kind: sum(1 for s in samples if s.defect_type == kind) for kind in ("good", *DEFECT_TYPES)}
    assert counts == {"good": 2, "scratch": 3, "spot": 3}
    for sample in samples:
        assert read_image(sample.path).shape == (64, 96)
        image, mask = load_test_item(sample, (32, 32), "gray")
        assert image.shape == (1, 32, 32)
        assert mask.any() == sample.is_defect  # every defect has pixels in its mask, good parts none


def test_masks_cover_exactly_the_pixels_the_defect_changed(tmp_path):
    root = write_synthetic_set(tmp_path / "parts", SMALL)
    for kind in DEFECT_TYPES:
        for index in range(SMALL.test_per_defect):
            rng = part_rng(SMALL, "test", kind, index)
            clean = render_surface(rng, SMALL.size)
            image, mask = add_defect(clean, kind, rng)
            written = read_image(root / "test" / kind / f"{index:04d}.png")
            written_mask = read_image(root / "ground_truth" / kind / f"{index:04d}_mask.png") > 127
            assert np.array_equal(written, to_pixels(image)) and np.array_equal(written_mask, mask)
            change = np.abs(written.astype(int) - to_pixels(clean).astype(int))
            assert mask.sum() >= 20, f"{kind} {index}: defect too small to see"
            assert change[mask].min() >= 20, f"{kind} {index}: masked pixels the defect did not change"
            assert change[~mask].max() <= 35, f"{kind} {index}: changed pixels left out of the mask"


def test_same_seed_gives_the_same_set_and_another_seed_another(tmp_path):
    first = write_synthetic_set(tmp_path / "a", SMALL)
    again = write_synthetic_set(tmp_path / "b", SMALL)
    other = write_synthetic_set(tmp_path / "c", SyntheticSetSpec(**{**SMALL.__dict__, "seed": 4}))
    names = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert names == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((first / n).read_bytes() == (again / n).read_bytes() for n in names)
    assert (first / names[0]).read_bytes() != (other / names[0]).read_bytes()
    # Training and test parts come from separate random streams: no test part repeats a training part.
    train = {p.read_bytes() for p in (first / "train" / "good").iterdir()}
    assert not train & {p.read_bytes() for p in (first / "test" / "good").iterdir()}


def test_bad_specs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least 32x32"):
        SyntheticSetSpec(size=(16, 64))
    with pytest.raises(ValueError, match="at least 4 good training parts"):
        SyntheticSetSpec(train_good=2)
    with pytest.raises(ValueError, match="unknown synthetic defect type 'dent'"):
        add_defect(np.zeros((64, 64), np.float32), "dent", np.random.default_rng(0))
