"""Domain adaptation of the feature extractor: make F(healed) match F(input) on good images, while a
distillation term keeps F near its frozen ImageNet copy so the objective cannot collapse F to a constant."""

from __future__ import annotations

import copy

import numpy as np
import torch

from edge_runtime.sampler import ConditionedDDIMSampler
from edge_runtime.settings import InspectionSettings
from train_host.autoencoder import Autoencoder
from train_host.backbone import Backbone
from train_host.config import AdaptationConfig
from train_host.feature_loss import stagewise_cosine_loss
from train_host.torch_setup import progress
from train_host.unet import UNet


@torch.inference_mode()
def heal_batch(
    autoencoder: Autoencoder, unet: UNet, sampler: ConditionedDDIMSampler, images: torch.Tensor, timestep: int
) -> torch.Tensor:
    """Heal a batch at one noise level through the device's own numpy sampler."""
    latent = autoencoder.encode(images).cpu().numpy()
    current = sampler.scale_input(latent, timestep)
    for t, t_prev in sampler.timestep_pairs(timestep):
        timesteps = torch.full((len(images),), t, device=images.device)
        predicted = unet(torch.from_numpy(current).to(images.device), timesteps).cpu().numpy()
        current = sampler.step(current, predicted, latent, t, t_prev)
    return autoencoder.decode(torch.from_numpy(current).to(images.device))


def adapt_backbone(
    backbone: Backbone,
    autoencoder: Autoencoder,
    unet: UNet,
    sampler: ConditionedDDIMSampler,
    settings: InspectionSettings,
    images: np.ndarray,
    config: AdaptationConfig,
    device: torch.device,
    seed: int,
) -> tuple[Backbone, list[float]]:
    generator = torch.Generator().manual_seed(seed)
    frozen = copy.deepcopy(backbone).eval().requires_grad_(False).to(device)
    # Batch-norm statistics stay as trained on ImageNet: small batches would only add noise to them.
    adapted = backbone.to(device).eval()
    optimiser = torch.optim.AdamW(adapted.parameters(), lr=config.learning_rate)
    levels = list(range(20, settings.t_max + 1, 10))
    data = torch.from_numpy(images)
    losses: list[float] = []
    bar = progress(range(config.iterations), "adaptation")
    for _ in bar:
        batch = data[torch.randint(0, len(data), (config.batch_size,), generator=generator)].to(device)
        timestep = levels[int(torch.randint(0, len(levels), (1,), generator=generator))]
        healed = heal_batch(autoencoder, unet, sampler, batch, timestep).clone()
        input_features = adapted(batch)
        loss = stagewise_cosine_loss(adapted(healed), input_features)
        loss = loss + config.distill_weight * stagewise_cosine_loss(input_features, frozen(batch))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return adapted.eval(), losses
