"""The latent autoencoder: image (C x H x W) <-> latent (`latent_channels` x H/8 x W/8), trained on good
images."""

from __future__ import annotations

import torch
from torch import nn

from train_host.layers import Downsample, ResBlock, Upsample, norm


class Encoder(nn.Module):
    def __init__(self, image_channels: int, channels: list[int], latent_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(image_channels, channels[0], 3, padding=1)]
        for current, following in zip(channels[:-1], channels[1:], strict=True):
            layers += [ResBlock(current, current), Downsample(current, following)]
        layers += [ResBlock(channels[-1], channels[-1]), norm(channels[-1]), nn.SiLU()]
        layers.append(nn.Conv2d(channels[-1], latent_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


class Decoder(nn.Module):
    def __init__(self, image_channels: int, channels: list[int], latent_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, channels[-1], 3, padding=1)]
        layers.append(ResBlock(channels[-1], channels[-1]))
        for current, following in zip(channels[:0:-1], channels[-2::-1], strict=True):
            layers += [Upsample(current, following), ResBlock(following, following)]
        layers += [norm(channels[0]), nn.SiLU(), nn.Conv2d(channels[0], image_channels, 3, padding=1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent)


class Autoencoder(nn.Module):
    """`encode` returns latents scaled to about unit variance, as the denoiser expects."""

    def __init__(self, image_channels: int, channels: list[int], latent_channels: int) -> None:
        super().__init__()
        self.encoder = Encoder(image_channels, channels, latent_channels)
        self.decoder = Decoder(image_channels, channels, latent_channels)
        self.register_buffer("latent_scale", torch.tensor(1.0))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image) * self.latent_scale

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent / self.latent_scale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(image))
