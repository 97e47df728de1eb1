"""Training the latent autoencoder on good images (random crops, flips; L1 reconstruction, optionally plus the
frozen map backbone's feature distance, the measure the feature map applies to input and healed image)."""

from __future__ import annotations

import numpy as np
import torch

from train_host.autoencoder import Autoencoder
from train_host.backbone import Backbone
from train_host.config import AutoencoderConfig
from train_host.feature_loss import stagewise_cosine_loss
from train_host.torch_setup import progress


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random crop per image (the whole image where it is smaller), with random flips."""
    _, _, height, width = images.shape
    crop_h, crop_w = min(size, height), min(size, width)
    top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
    crops = images[:, :, top : top + crop_h, left : left + crop_w]
    if torch.rand(1, generator=generator) < 0.5:
        crops = crops.flip(3)
    if torch.rand(1, generator=generator) < 0.5:
        crops = crops.flip(2)
    return crops


def crop_shape(images: np.ndarray, config: AutoencoderConfig) -> tuple[int, int]:
    """(height, width) of the training crops of these NxCxHxW images."""
    return min(config.crop_size, images.shape[2]), min(config.crop_size, images.shape[3])


def reconstruction_loss(
    reconstruction: torch.Tensor, batch: torch.Tensor, features: Backbone | None, feature_weight: float
) -> torch.Tensor:
    loss = (reconstruction - batch).abs().mean()
    if features is not None and feature_weight > 0:
        with torch.no_grad():
            target = features(batch)
        loss = loss + feature_weight * stagewise_cosine_loss(features(reconstruction), target)
    return loss


def train_autoencoder(
    images: np.ndarray,
    config: AutoencoderConfig,
    device: torch.device,
    seed: int,
    features: Backbone | None = None,
) -> tuple[Autoencoder, list[float]]:
    """images: NxCxHxW float32 in [-1, 1]; `features`: a frozen backbone built for `crop_shape`, needed when
    `config.feature_loss_weight` > 0. Returns the model (latent scale set) and the loss history."""
    if config.feature_loss_weight > 0 and features is None:
        raise ValueError("autoencoder.feature_loss_weight > 0 needs the frozen map backbone")
    if features is not None:
        features = features.to(device).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    model = Autoencoder(images.shape[1], config.channels, config.latent_channels).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.iterations)
    data = torch.from_numpy(images)
    losses: list[float] = []
    bar = progress(range(config.iterations), "autoencoder")
    for _ in bar:
        batch_index = torch.randint(0, len(data), (config.batch_size,), generator=generator)
        batch = random_crops(data[batch_index], config.crop_size, generator).to(device)
        loss = reconstruction_loss(model(batch), batch, features, config.feature_loss_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(l1=f"{np.mean(losses[-50:]):.4f}")
    model.latent_scale.fill_(1.0 / latent_std(model, data, device))
    return model.eval(), losses


@torch.inference_mode()
def latent_std(model: Autoencoder, data: torch.Tensor, device: torch.device, batch_size: int = 16) -> float:
    """Standard deviation of raw latents over the training images, so scaled latents are about unit scale."""
    latents = [model.encoder(data[i : i + batch_size].to(device)).cpu() for i in range(0, len(data), batch_size)]
    return float(torch.cat(latents).std().clamp_min(1e-6))
