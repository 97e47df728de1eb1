"""Training the latent denoiser: epsilon prediction with the D3AD schedule, AdamW and an EMA copy."""

from __future__ import annotations

import copy

import numpy as np
import torch

from edge_runtime.schedule import DiffusionSchedule
from train_host.autoencoder import Autoencoder
from train_host.config import UNetConfig
from train_host.torch_setup import progress
from train_host.unet import UNet


@torch.inference_mode()
def encode_with_flips(autoencoder: Autoencoder, images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Latents of every image and of its horizontal and vertical mirror images."""
    data = torch.from_numpy(images)
    latents = []
    for start in range(0, len(data), 16):
        batch = data[start : start + 16].to(device)
        for variant in (batch, batch.flip(3), batch.flip(2)):
            latents.append(autoencoder.encode(variant).cpu())
    return torch.cat(latents)


def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for avg_param, param in zip(average.parameters(), model.parameters(), strict=True):
            avg_param.lerp_(param, 1.0 - decay)


def train_denoiser(
    latents: torch.Tensor,
    config: UNetConfig,
    schedule: DiffusionSchedule,
    device: torch.device,
    seed: int,
) -> tuple[UNet, list[float]]:
    """Returns the EMA weights of the U-Net and the loss history."""
    generator = torch.Generator().manual_seed(seed)
    model = UNet(latents.shape[1], config.base_channels, config.channel_multipliers, config.attention_levels)
    model = model.to(device)
    average = copy.deepcopy(model).eval()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    alpha_bars = torch.tensor(schedule.alpha_bars, dtype=torch.float32)
    max_timestep = min(config.max_train_timestep, schedule.num_timesteps)
    losses: list[float] = []
    bar = progress(range(config.iterations), "denoiser")
    for step in bar:
        index = torch.randint(0, len(latents), (config.batch_size,), generator=generator)
        clean = latents[index]
        timesteps = torch.randint(0, max_timestep, (config.batch_size,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        alpha_bar = alpha_bars[timesteps][:, None, None, None]
        noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
        predicted = model(noisy.to(device), timesteps.to(device))
        loss = torch.nn.functional.mse_loss(predicted, noise.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        # Warm-up: a short run must not keep a share of the random initial weights in its average.
        ema_update(average, model, min(config.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(mse=f"{np.mean(losses[-50:]):.4f}")
    return average, losses
