"""The device inspector on the tiny bundle: torch-free, agreeing with the host, refusing bad frames."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from edge_runtime.bench import measure_latency, memory_only
from edge_runtime.inspector import Inspector, InspectorPool, load_memory
from edge_runtime.openvino_networks import NETWORK_NAMES, CompiledNetworks, OpenVinoNetworks, RuntimeOptions
from edge_runtime.pipeline import InspectionPipeline
from edge_runtime.preprocess import FrameError
from export.builder import graph_specs
from export.convert import onnx_to_openvino, save_ir, to_onnx
from train_host.dataset import list_test_samples, load_test_item
from train_host.run_store import build_pipeline, load_run, schedule_of


def test_edge_inspection_never_imports_torch(slot):
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from edge_runtime.inspector import Inspector\n"
        f"inspector = Inspector.from_slot(Path({str(slot)!r}))\n"
        "frame = (np.random.default_rng(0).random((90, 120)) * 255).astype(np.uint8)\n"
        "result = inspector.inspect(frame)\n"
        "assert np.isfinite(result.score) and result.anomaly_map.shape == (64, 64)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', result.score)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ok")


def test_device_maps_match_host_maps_on_fixed_inputs(tiny_run, tiny_dataset, tmp_path):
    """The same numpy pipeline driven by torch (host) and by FP32 OpenVINO IR (device) gives the same maps."""
    run = load_run(tiny_run)
    files = {}
    for name, spec in graph_specs(run).items():
        files[name] = save_ir(
            onnx_to_openvino(to_onnx(spec, tmp_path / f"{name}.onnx")), tmp_path / f"{name}.xml", False
        )[0]
    settings = run.config.inspection
    device = InspectionPipeline(OpenVinoNetworks.from_files(files), run.memory, settings, schedule_of(run.config))
    host = build_pipeline(run, settings, torch.device("cpu"))
    sample = next(s for s in list_test_samples(tiny_dataset) if s.is_defect)
    image, _ = load_test_item(sample, run.config.data.image_size, run.config.data.color)
    host_raw = host.raw_maps(image, run.calibration.bins)
    device_raw = device.raw_maps(image, run.calibration.bins)
    assert (device_raw.severity_bin, device_raw.timestep) == (host_raw.severity_bin, host_raw.timestep)
    for kind, host_map in host_raw.maps.items():
        scale = float(np.abs(host_map).max())
        assert np.abs(device_raw.maps[kind] - host_map).max() <= 2e-3 * scale, kind
    assert set(files) == set(NETWORK_NAMES)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((0, 5), np.uint8),
        np.zeros((20, 20, 2), np.uint8),
        np.full((20, 20), np.nan, np.float32),
        np.zeros((20, 20), np.int64),
    ],
)
def test_malformed_frames_give_no_verdict(slot, frame):
    with pytest.raises(FrameError):
        Inspector.from_slot(slot).inspect(frame)


def test_a_network_is_compiled_only_once_a_frame_needs_it(slot):
    inspector = Inspector.from_slot(slot)
    # At load, the inspector compiles what its own fusion weights use (all five for the tiny model's feature map).
    assert inspector.compiled.compiled_names() == inspector.pipeline.used_networks(inspector.calibration)
    compiled = CompiledNetworks({name: slot / spec.xml for name, spec in inspector.manifest.networks.items()})
    pipeline = InspectionPipeline(
        compiled.worker(), inspector.memory, inspector.manifest.inspection, inspector.manifest.schedule.to_schedule()
    )
    image = inspector.prepare((np.random.default_rng(5).random((64, 64)) * 255).astype(np.uint8))
    assert compiled.compiled_names() == []
    memory_alone = memory_only(inspector.calibration)
    pipeline.inspect(image, memory_alone)
    assert compiled.compiled_names() == pipeline.used_networks(memory_alone) == ["knn_backbone"]
    without_features = replace(inspector.calibration, map_weights={"latent": 1.0, "feature": 0.0, "knn": 1.0})
    pipeline.inspect(image, without_features)
    assert compiled.compiled_names() == ["denoiser", "encoder", "knn_backbone"]
    pipeline.inspect(image, inspector.calibration)
    assert compiled.compiled_names() == sorted(NETWORK_NAMES)


def test_pool_gives_the_same_results_as_one_thread(slot):
    inspector = Inspector.from_slot(slot)
    rng = np.random.default_rng(3)
    frames = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(6)]
    sequential = [inspector.inspect(frame).score for frame in frames]
    pool = InspectorPool(inspector, workers=2)
    pooled = [future.result().score for future in [pool.submit(frame) for frame in frames]]
    pool.close()
    np.testing.assert_allclose(pooled, sequential, rtol=1e-5)


def test_result_is_typed_and_timed(slot):
    inspector = Inspector.from_slot(slot)
    # Every map weighted, whatever the calibration chose: a map weighted zero is not computed, nor timed.
    inspector.calibration = replace(inspector.calibration, map_weights={"latent": 1.0, "feature": 1.0, "knn": 1.0})
    result = inspector.inspect(np.full((64, 64), 128, np.uint8))
    assert isinstance(result.is_defect, bool) and 1 <= result.severity_bin <= 10
    assert result.steps == 2 and 20 <= result.timestep <= 80
    assert {"preprocess", "knn", "encode", "denoise", "decode", "feature_maps", "fuse", "total"} <= set(
        result.timings_ms
    )
    latency, stages, fps = measure_latency(inspector.inspect, [np.zeros((64, 64), np.uint8)] * 3, 1)
    assert latency.p50_ms > 0 and fps > 0 and "denoise" in stages


def test_the_healed_image_is_decoded_on_request_without_changing_the_verdict(slot):
    """A report shows the healed image even where no map needs it decoded; asking for it changes nothing else."""
    inspector = Inspector.from_slot(slot)
    inspector.calibration = replace(inspector.calibration, map_weights={"latent": 1.0, "feature": 0.0, "knn": 1.0})
    image = inspector.prepare((np.random.default_rng(7).random((64, 64)) * 255).astype(np.uint8))
    plain = inspector.pipeline.inspect(image, inspector.calibration)
    shown = inspector.pipeline.inspect(image, inspector.calibration, decode_healed=True)
    assert plain.healed_image is None and shown.healed_image is not None
    assert shown.healed_image.shape == image.shape and np.abs(shown.healed_image).max() <= 1.0
    assert shown.score == plain.score
    np.testing.assert_array_equal(shown.anomaly_map, plain.anomaly_map)


def test_zero_weighted_maps_are_not_computed(slot):
    """A map the fusion weighs zero costs nothing: without the feature map there is no decode and no map
    backbone, and the fused map is the same as computing everything and weighing it zero."""
    inspector = Inspector.from_slot(slot)
    frame = (np.random.default_rng(6).random((64, 64)) * 255).astype(np.uint8)
    weights = {"latent": 1.0, "feature": 0.0, "knn": 1.0}
    inspector.calibration = replace(inspector.calibration, map_weights=weights)
    result = inspector.inspect(frame)
    assert "decode" not in result.timings_ms and "feature_maps" not in result.timings_ms
    assert "encode" in result.timings_ms and result.healed_image is None
    pipeline = inspector.pipeline
    everything = pipeline.raw_maps(inspector.prepare(frame), inspector.calibration.bins)
    assert set(everything.maps) == {"latent", "feature", "knn"}
    np.testing.assert_allclose(
        result.anomaly_map, pipeline.anomaly_map(everything, inspector.calibration), rtol=1e-5, atol=1e-6
    )


def test_latency_mode_searches_with_every_core_and_throughput_mode_with_one(slot):
    assert Inspector.from_slot(slot, RuntimeOptions(threads=2)).memory.query_threads == 2
    assert Inspector.from_slot(slot, RuntimeOptions(performance_hint="THROUGHPUT")).memory.query_threads == 1


def test_a_memory_joined_in_typical_distances_needs_schema_6(slot, bundle):
    manifest = bundle[1]
    memory = load_memory(slot, manifest)
    assert manifest.schema_version >= 6 and min(memory.scale_units()) > 0.0 and memory.scale_units() != (1.0, 1.0)
    older = manifest.model_copy(update={"schema_version": 5})
    with pytest.raises(RuntimeError, match="typical distances, which needs manifest schema 6, not 5"):
        load_memory(slot, older)


def test_a_memory_searched_sparsely_needs_schema_8(slot, bundle):
    manifest = bundle[1]
    memory = load_memory(slot, manifest)
    assert manifest.schema_version >= 8 and memory.ordinary_distance > memory.typical_distance
    older = manifest.model_copy(update={"schema_version": 7})
    with pytest.raises(
        RuntimeError, match="searched sparsely below its ordinary distance, which needs manifest schema 8"
    ):
        load_memory(slot, older)
