import numpy as np
import pytest
import torch

from train_host.backbone import Backbone
from train_host.config import AutoencoderConfig
from train_host.fit_autoencoder import crop_shape, reconstruction_loss, train_autoencoder

TINY = AutoencoderConfig(channels=[4, 4, 8, 8], iterations=2, batch_size=2, crop_size=32)


def striped_images(count: int = 4, size: int = 64) -> np.ndarray:
    columns = np.arange(size, dtype=np.float32)
    stripes = np.sin(columns / 2.0)[None, None, None, :].repeat(size, axis=2)
    return np.repeat(stripes, count, axis=0) * 0.5


def test_feature_loss_sees_lost_texture_that_l1_barely_does():
    # A reconstruction that keeps the mean but blurs the stripes away: small in L1 over a faint texture,
    # large as the map backbone sees it.
    batch = torch.from_numpy(striped_images(2, 64)) * 0.2
    blurred = torch.zeros_like(batch)
    features = Backbone([1, 2], (64, 64)).eval().requires_grad_(False)
    pixels_only = float(reconstruction_loss(blurred, batch, None, 0.0))
    with_features = float(reconstruction_loss(blurred, batch, features, 1.0))
    assert with_features - pixels_only > 3 * pixels_only
    assert float(reconstruction_loss(batch, batch, features, 1.0)) < 1e-4


def test_feature_loss_needs_the_backbone():
    config = TINY.model_copy(update={"feature_loss_weight": 0.5})
    with pytest.raises(ValueError, match="feature_loss_weight"):
        train_autoencoder(striped_images(), config, torch.device("cpu"), seed=0)


def test_training_with_the_feature_loss_runs_on_crops():
    images = striped_images()
    config = TINY.model_copy(update={"feature_loss_weight": 0.5})
    features = Backbone([1, 2], crop_shape(images, config))
    model, losses = train_autoencoder(images, config, torch.device("cpu"), seed=0, features=features)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert tuple(model(torch.from_numpy(images)).shape) == images.shape
