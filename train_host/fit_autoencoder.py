"""Training the latent autoencoder on good images (random crops, flips; L1 reconstruction)."""

from __future__ import annotations

import numpy as np
import torch

from train_host.autoencoder import Autoencoder
from train_host.config import AutoencoderConfig
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


def train_autoencoder(
    images: np.ndarray, config: AutoencoderConfig, device: torch.device, seed: int
) -> tuple[Autoencoder, list[float]]:
    """images: NxCxHxW float32 in [-1, 1]. Returns the model (latent scale set) and the loss history."""
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
        loss = (model(batch) - batch).abs().mean()
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
