"""The diffusion noise schedule shared by training and inspection."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DiffusionSchedule:
    """Linear beta schedule; `alpha_bar(t)` is the cumulative product of (1 - beta) up to t."""

    num_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195

    def __post_init__(self) -> None:
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")

    @functools.cached_property
    def alpha_bars(self) -> np.ndarray:
        """Read-only: computed once per schedule, as every denoising step asks for two of them."""
        betas = np.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=np.float64)
        alpha_bars = np.cumprod(1.0 - betas)
        alpha_bars.flags.writeable = False
        return alpha_bars

    def alpha_bar(self, t: int) -> float:
        """alpha_bar at timestep t; t = -1 stands for the clean sample (alpha_bar = 1)."""
        if t == -1:
            return 1.0
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep {t} outside 0..{self.num_timesteps - 1}")
        return float(self.alpha_bars[t])
