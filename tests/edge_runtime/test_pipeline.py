"""Which fusion weights and networks a frame uses."""

from edge_runtime.pipeline import networks_for, weights_in_force
from edge_runtime.settings import InspectionSettings


def test_weights_chosen_in_calibration_win_over_the_configured_ones() -> None:
    settings = InspectionSettings()
    chosen = {"latent": 0.0, "feature": 0.0, "knn": 1.0}
    assert weights_in_force(chosen, settings) == chosen
    assert weights_in_force(None, settings) == settings.map_weights.as_dict()


def test_a_frame_runs_only_the_networks_its_weighed_maps_need() -> None:
    assert networks_for({"latent": 0.0, "feature": 0.0, "knn": 1.0}) == ["knn_backbone"]
    assert networks_for({"latent": 0.85, "feature": 0.0, "knn": 1.0}) == ["denoiser", "encoder", "knn_backbone"]
    assert "map_backbone" in networks_for({"latent": 0.0, "feature": 0.15, "knn": 1.0})
