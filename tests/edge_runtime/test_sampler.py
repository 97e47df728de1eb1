import numpy as np
import pytest

from edge_runtime.sampler import ConditionedDDIMSampler
from edge_runtime.schedule import DiffusionSchedule

SCHEDULE = DiffusionSchedule()


def perfect_predictor(clean: np.ndarray):
    """Knows the clean latent, so it returns exactly the noise contained in z_t."""

    def predict(latent_t: np.ndarray, t: int) -> np.ndarray:
        alpha_bar = SCHEDULE.alpha_bar(t)
        return (latent_t - np.sqrt(alpha_bar) * clean) / np.sqrt(1.0 - alpha_bar)

    return predict


def heal(
    sampler: ConditionedDDIMSampler, start: np.ndarray, condition: np.ndarray, t_start: int, predict
) -> np.ndarray:
    current = start
    for t, t_prev in sampler.timestep_pairs(t_start):
        current = sampler.step(current, predict(current, t), condition, t, t_prev)
    return current


def test_schedule_matches_method_constants():
    betas_first = 1.0 - SCHEDULE.alpha_bars[0]
    assert betas_first == pytest.approx(0.0015)
    assert SCHEDULE.alpha_bar(-1) == 1.0
    assert SCHEDULE.alpha_bar(80) == pytest.approx(np.prod(1 - np.linspace(0.0015, 0.0195, 1000)[:81]))


def test_timestep_pairs_run_from_start_to_clean():
    sampler = ConditionedDDIMSampler(SCHEDULE, num_steps=4)
    assert sampler.timestep_pairs(80) == ((80, 60), (60, 40), (40, 20), (20, -1))
    assert ConditionedDDIMSampler(SCHEDULE, num_steps=1).timestep_pairs(50) == ((50, -1),)


def test_zero_steps_returns_the_input():
    sampler = ConditionedDDIMSampler(SCHEDULE, num_steps=0)
    latent = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
    assert sampler.timestep_pairs(60) == ()
    np.testing.assert_array_equal(heal(sampler, latent, latent, 60, perfect_predictor(latent)), latent)


@pytest.mark.parametrize("steps", [1, 2, 4, 10])
@pytest.mark.parametrize("weight", [0.0, 4.0])
def test_perfect_noise_predictor_recovers_clean_latent(steps: int, weight: float):
    rng = np.random.default_rng(steps)
    clean = rng.standard_normal((4, 8, 8))
    noise = rng.standard_normal((4, 8, 8))
    sampler = ConditionedDDIMSampler(SCHEDULE, num_steps=steps, condition_weight=weight)
    noisy = sampler.scale_input(clean, 80, noise).astype(np.float64)
    healed = heal(sampler, noisy, clean, 80, perfect_predictor(clean))
    np.testing.assert_allclose(healed, clean, atol=1e-4)


def test_noiseless_scaling_is_a_pure_scale():
    sampler = ConditionedDDIMSampler(SCHEDULE, num_steps=2)
    latent = np.ones((4, 2, 2), dtype=np.float32)
    np.testing.assert_allclose(sampler.scale_input(latent, 60), np.sqrt(SCHEDULE.alpha_bar(60)), rtol=1e-6)


def test_step_is_pure():
    sampler = ConditionedDDIMSampler(SCHEDULE, num_steps=2)
    rng = np.random.default_rng(1)
    latent, noise, condition = (rng.standard_normal((4, 4, 4)).astype(np.float32) for _ in range(3))
    copies = [a.copy() for a in (latent, noise, condition)]
    first = sampler.step(latent, noise, condition, 60, 30)
    second = sampler.step(latent, noise, condition, 60, 30)
    np.testing.assert_array_equal(first, second)
    for original, copy in zip((latent, noise, condition), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


def test_conditioning_pulls_towards_condition():
    """With a useless (zero) noise estimate, a larger w moves the result towards the condition latent."""
    rng = np.random.default_rng(2)
    condition = rng.standard_normal((4, 4, 4))
    start = ConditionedDDIMSampler(SCHEDULE, 1).scale_input(rng.standard_normal((4, 4, 4)), 60)
    zero = lambda latent, t: np.zeros_like(latent)  # noqa: E731
    errors = []
    for weight in (0.0, 4.0):
        sampler = ConditionedDDIMSampler(SCHEDULE, num_steps=1, condition_weight=weight)
        errors.append(np.abs(heal(sampler, start, condition, 60, zero) - condition).mean())
    assert errors[1] < errors[0]
