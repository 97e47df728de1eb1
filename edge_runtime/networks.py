"""What the inspection pipeline needs from the neural networks, whatever runs them (torch on a host,
OpenVINO on a device). Images are CxHxW float32 in [-1, 1]; latents are L x H/8 x W/8 float32 (L
latent channels, set by the bundle's networks)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class InspectionNetworks(Protocol):
    def knn_features(self, image: np.ndarray) -> list[np.ndarray]:
        """Backbone stage maps used for the KNN memory (frozen ImageNet backbone), finest first."""
        ...

    def map_features(self, image: np.ndarray) -> list[np.ndarray]:
        """Backbone stage maps compared between input and healed image."""
        ...

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Image -> scaled latent."""
        ...

    def predict_noise(self, latent: np.ndarray, timestep: int) -> np.ndarray:
        """The denoiser's noise estimate for a latent at a timestep."""
        ...

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """Scaled latent -> image."""
        ...
