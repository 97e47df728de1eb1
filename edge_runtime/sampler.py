"""Conditioned DDIM (eta = 0) healing of a latent, in the style of a diffusion scheduler.

The (t, t_prev) pairs are precomputed for a start timestep; `step` is a pure function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.schedule import DiffusionSchedule


@dataclass(frozen=True)
class ConditionedDDIMSampler:
    schedule: DiffusionSchedule
    num_steps: int
    condition_weight: float = 4.0

    def __post_init__(self) -> None:
        if self.num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")

    def timestep_pairs(self, t_start: int) -> tuple[tuple[int, int], ...]:
        """Evenly spaced timesteps from t_start down to the clean sample (-1), one pair per network call."""
        if self.num_steps == 0:
            return ()
        steps = [round(t_start * (self.num_steps - i) / self.num_steps) for i in range(self.num_steps)]
        # Rounding can repeat a timestep when t_start < num_steps; a repeated call would do nothing useful.
        steps = sorted(set(steps), reverse=True)
        return tuple(zip(steps, steps[1:] + [-1], strict=True))

    def scale_input(self, latent: np.ndarray, t_start: int, noise: np.ndarray | None = None) -> np.ndarray:
        """Bring a clean latent to timestep t_start: noiseless scaling, or the usual forward noising."""
        alpha_bar = self.schedule.alpha_bar(t_start)
        scaled = np.sqrt(alpha_bar) * latent
        if noise is not None:
            scaled = scaled + np.sqrt(1.0 - alpha_bar) * noise
        return scaled.astype(np.float32)

    def step(
        self, latent_t: np.ndarray, predicted_noise: np.ndarray, condition: np.ndarray, t: int, t_prev: int
    ) -> np.ndarray:
        """One DDIM step from t to t_prev, pulling the noise estimate towards the condition latent."""
        alpha_bar = self.schedule.alpha_bar(t)
        alpha_bar_prev = self.schedule.alpha_bar(t_prev)
        sigma = np.sqrt(1.0 - alpha_bar)
        condition_t = np.sqrt(alpha_bar) * condition + sigma * predicted_noise
        guided_noise = predicted_noise - self.condition_weight * sigma * (condition_t - latent_t)
        clean_estimate = (latent_t - sigma * guided_noise) / np.sqrt(alpha_bar)
        latent_prev = np.sqrt(alpha_bar_prev) * clean_estimate + np.sqrt(1.0 - alpha_bar_prev) * guided_noise
        return latent_prev.astype(np.float32)
