import numpy as np
import pytest

from edge_runtime.preprocess import FrameError, preprocess


def test_gray_and_colour_frames_become_model_input():
    gray = np.full((30, 50), 255, np.uint8)
    result = preprocess(gray, (32, 64), "gray")
    assert result.shape == (1, 32, 64) and result.dtype == np.float32
    np.testing.assert_allclose(result, 1.0)
    colour = np.zeros((30, 50, 3), np.uint8)
    assert preprocess(colour, (32, 32), "rgb").shape == (3, 32, 32)
    assert preprocess(colour, (32, 32), "gray").shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((10, 10, 2), np.uint8), "channels"),
        (np.zeros((10, 10), np.int32), "dtype"),
        (np.full((10, 10), np.nan, np.float32), "NaN"),
        (np.full((10, 10), 3.0, np.float32), r"\[0, 1\]"),
        (np.zeros((2, 10, 10, 3), np.uint8), "HxW"),
        ([[0, 1]], "numpy array"),
    ],
)
def test_malformed_frames_are_refused(frame, message):
    with pytest.raises(FrameError, match=message):
        preprocess(frame, (32, 32), "gray")
