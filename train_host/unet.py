"""A small denoising U-Net on latents: predicts the noise in z_t at timestep t."""

from __future__ import annotations

import torch
from torch import nn

from train_host.layers import Downsample, ResBlock, SelfAttention, Upsample, norm, timestep_embedding


class Level(nn.Module):
    """One resolution of the U-Net: a residual block and optional attention."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, attention: bool) -> None:
        super().__init__()
        self.block = ResBlock(in_channels, out_channels, embedding_dim)
        self.attention = SelfAttention(out_channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.attention(self.block(x, embedding))


class UNet(nn.Module):
    def __init__(
        self, latent_channels: int, base_channels: int, multipliers: list[int], attention_levels: list[int]
    ) -> None:
        super().__init__()
        widths = [base_channels * m for m in multipliers]
        self.embedding_dim = base_channels * 4
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, self.embedding_dim), nn.SiLU(), nn.Linear(self.embedding_dim, self.embedding_dim)
        )
        self.base_channels = base_channels
        self.conv_in = nn.Conv2d(latent_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            self.down.append(Level(previous, width, self.embedding_dim, level in attention_levels))
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else Downsample(width, width))
            previous = width
        self.middle = Level(previous, previous, self.embedding_dim, attention=True)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            self.up.append(Level(previous + width, width, self.embedding_dim, level in attention_levels))
            following = widths[level - 1] if level > 0 else width
            self.upsample.append(Upsample(width, following) if level > 0 else nn.Identity())
            previous = following
        self.conv_out = nn.Sequential(norm(previous), nn.SiLU(), nn.Conv2d(previous, latent_channels, 3, padding=1))

    def forward(self, latent: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        embedding = self.time_mlp(timestep_embedding(timesteps, self.base_channels))
        x = self.conv_in(latent)
        skips = []
        for level, downsample in zip(self.down, self.downsample, strict=True):
            x = level(x, embedding)
            skips.append(x)
            x = downsample(x)
        x = self.middle(x, embedding)
        for level, upsample in zip(self.up, self.upsample, strict=True):
            x = level(torch.cat([x, skips.pop()], dim=1), embedding)
            x = upsample(x)
        return self.conv_out(x)
