"""Torch models behind the device's `InspectionNetworks` interface, so the host evaluates through the
same numpy pipeline the device runs."""

from __future__ import annotations

import numpy as np
import torch

from train_host.autoencoder import Autoencoder
from train_host.backbone import Backbone
from train_host.unet import UNet


class TorchNetworks:
    def __init__(
        self,
        autoencoder: Autoencoder,
        unet: UNet,
        knn_backbone: Backbone,
        map_backbone: Backbone,
        device: torch.device,
    ) -> None:
        self.autoencoder = autoencoder.eval().to(device)
        self.unet = unet.eval().to(device)
        self.knn_backbone = knn_backbone.eval().to(device)
        self.map_backbone = map_backbone.eval().to(device)
        self.device = device

    def _batch(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None].to(self.device)

    @staticmethod
    def _single(tensor: torch.Tensor) -> np.ndarray:
        return tensor[0].float().cpu().numpy()

    @torch.inference_mode()
    def knn_features(self, image: np.ndarray) -> list[np.ndarray]:
        return [self._single(stage) for stage in self.knn_backbone(self._batch(image))]

    @torch.inference_mode()
    def map_features(self, image: np.ndarray) -> list[np.ndarray]:
        return [self._single(stage) for stage in self.map_backbone(self._batch(image))]

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> np.ndarray:
        return self._single(self.autoencoder.encode(self._batch(image)))

    @torch.inference_mode()
    def predict_noise(self, latent: np.ndarray, timestep: int) -> np.ndarray:
        timesteps = torch.tensor([timestep], device=self.device)
        return self._single(self.unet(self._batch(latent), timesteps))

    @torch.inference_mode()
    def decode(self, latent: np.ndarray) -> np.ndarray:
        return self._single(self.autoencoder.decode(self._batch(latent)))
