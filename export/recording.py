"""Records what each network is fed while the pipeline inspects good images: NNCF's calibration data."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from edge_runtime.networks import InspectionNetworks


class RecordingNetworks:
    """Wraps `InspectionNetworks` and keeps every network input (batch of one), per network name."""

    def __init__(self, inner: InspectionNetworks) -> None:
        self.inner = inner
        self.inputs: dict[str, list[tuple[np.ndarray, ...]]] = defaultdict(list)

    def _keep(self, name: str, *arrays: np.ndarray) -> None:
        self.inputs[name].append(tuple(np.ascontiguousarray(a[None]) for a in arrays))

    def knn_features(self, image: np.ndarray) -> list[np.ndarray]:
        self._keep("knn_backbone", image)
        return self.inner.knn_features(image)

    def map_features(self, image: np.ndarray) -> list[np.ndarray]:
        self._keep("map_backbone", image.astype(np.float32))
        return self.inner.map_features(image)

    def encode(self, image: np.ndarray) -> np.ndarray:
        self._keep("encoder", image)
        return self.inner.encode(image)

    def predict_noise(self, latent: np.ndarray, timestep: int) -> np.ndarray:
        self.inputs["denoiser"].append((np.ascontiguousarray(latent[None]), np.array([timestep], dtype=np.int64)))
        return self.inner.predict_noise(latent, timestep)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        self._keep("decoder", latent)
        return self.inner.decode(latent)
