"""Export of the tiny trained run: ONNX/OpenVINO parity with torch, the INT8 gate, the signed bundle."""

import json

import numpy as np
import openvino as ov
import pytest
import torch

from edge_runtime.inspector import Inspector
from edge_runtime.openvino_networks import NETWORK_NAMES, RuntimeOptions
from export.builder import graph_specs
from export.convert import GraphSpec, onnx_to_openvino, quantise_int8, to_onnx
from train_host.backbone import knn_backbone
from train_host.config import BackboneConfig
from train_host.evaluation import evaluate_bundle
from train_host.run_store import load_run


def compile_f32(model: ov.Model) -> ov.CompiledModel:
    return ov.Core().compile_model(model, "CPU", RuntimeOptions().compile_config())


def test_fp32_openvino_matches_torch_on_fixed_inputs(tiny_run, tmp_path):
    """Every network, exported through ONNX to OpenVINO IR, gives torch's outputs (abs 1e-3 of the range)."""
    run = load_run(tiny_run)
    rng = np.random.default_rng(0)
    for name, spec in graph_specs(run).items():
        compiled = compile_f32(onnx_to_openvino(to_onnx(spec, tmp_path / f"{name}.onnx")))
        inputs = [torch.from_numpy(rng.uniform(-1, 1, tuple(t.shape)).astype(np.float32)) for t in spec.example_inputs]
        if name == "denoiser":
            inputs[1] = torch.tensor([40])
        with torch.inference_mode():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, list | tuple) else [expected]
        produced = compiled([t.numpy() for t in inputs])
        for index, reference in enumerate(expected):
            reference = reference.numpy()
            scale = float(np.abs(reference).max()) + 1e-6
            assert np.abs(produced[index] - reference).max() <= 1e-3 * scale, name


def test_the_default_knn_backbone_exports_every_stage_faithfully(tmp_path):
    """The default KNN stages (the stride-32 one included) through ONNX to OpenVINO, against torch."""
    backbone = knn_backbone(BackboneConfig(), (192, 192))
    image = np.random.default_rng(2).uniform(-1, 1, (1, 1, 192, 192)).astype(np.float32)
    spec = GraphSpec(module=backbone, example_inputs=(torch.from_numpy(image),), input_names=("image",))
    compiled = compile_f32(onnx_to_openvino(to_onnx(spec, tmp_path / "knn_default.onnx")))
    with torch.inference_mode():
        expected = [t.numpy() for t in backbone(torch.from_numpy(image))]
    produced = list(compiled([image]).values())
    assert [p.shape[1] for p in produced] == [40, 80, 112, 192]
    for output, reference in zip(produced, expected, strict=True):
        assert np.abs(output - reference).max() <= 1e-3 * (float(np.abs(reference).max()) + 1e-6)


def test_int8_backbone_stays_close_to_torch(tiny_run, tmp_path):
    run = load_run(tiny_run)
    spec = graph_specs(run)["knn_backbone"]
    model = onnx_to_openvino(to_onnx(spec, tmp_path / "knn.onnx"))
    rng = np.random.default_rng(1)
    samples = [(rng.uniform(-1, 1, (1, 1, 64, 64)).astype(np.float32),) for _ in range(8)]
    compiled = compile_f32(quantise_int8(model, samples))
    image = samples[0][0]
    with torch.inference_mode():
        expected = [t.numpy().ravel() for t in run.knn_backbone(torch.from_numpy(image))]
    for produced, reference in zip(compiled([image]).values(), expected, strict=True):
        cosine = float(produced.ravel() @ reference / (np.linalg.norm(produced) * np.linalg.norm(reference)))
        assert cosine > 0.95


class _Smoothing(torch.nn.Module):
    """A 3x3 mean filter: its INT8 output is its input's range, so a clipped input range shows in it directly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        torch.nn.init.constant_(self.conv.weight, 1.0 / 9.0)
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


def test_int8_keeps_the_brightest_calibration_image_unclipped(tmp_path):
    """A defect lights activations up beyond the typical good image; ranges averaged over the calibration images
    would clip the one bright image here to about a fifth of its peak."""
    spec = GraphSpec(_Smoothing(), (torch.zeros(1, 1, 16, 16),), ("image",))
    model = onnx_to_openvino(to_onnx(spec, tmp_path / "smoothing.onnx"))
    rng = np.random.default_rng(2)
    samples = [(rng.uniform(0.0, 0.1, (1, 1, 16, 16)).astype(np.float32),) for _ in range(8)]
    bright = samples[-1][0].copy()
    bright[..., 4:12, 4:12] = 1.0
    samples[-1] = (bright,)
    produced = compile_f32(quantise_int8(model, samples))([bright])[0]
    with torch.inference_mode():
        expected = spec.module(torch.from_numpy(bright)).numpy()
    assert float(produced.max()) == pytest.approx(float(expected.max()), rel=0.05)


def test_bundle_records_precisions_and_gate(bundle):
    out, manifest = bundle
    assert set(manifest.networks) == set(NETWORK_NAMES)
    for spec in manifest.networks.values():
        assert spec.precision in ("int8", "fp16", "fp32")
        assert (spec.auroc_drop is None) == (spec.precision == "fp32")
    report = json.loads(out.with_suffix(".export.json").read_text())
    assert report["not_judged_off_frame"] == []  # the tiny model fuses the feature map: every network runs
    assert 0.0 <= report["gate_baseline_auroc"] <= 1.0 and report["trials"]
    assert manifest.input.height == 64 and manifest.input.color == "gray"
    assert len(manifest.references) == 3 and manifest.files


def test_bundle_searches_with_the_export_ef_and_the_run_keeps_its_own(slot, tiny_run):
    """The session bundle was exported with search_ef 12; its health check (references scored at export) passing
    shows the references were scored with that search too."""
    shipped = json.loads((slot / "memory" / "memory.json").read_text())
    trained = json.loads((tiny_run / "memory" / "memory.json").read_text())
    assert shipped["ef"] == 12 != trained["ef"]
    assert Inspector.from_slot(slot).memory.index.ef == 12
    measured_again = ("ef", "ordinary_distance")  # see the next test
    assert {k: v for k, v in shipped.items() if k not in measured_again} == {
        k: v for k, v in trained.items() if k not in measured_again
    }


def test_bundle_measures_its_ordinary_distance_through_its_own_networks(slot, tiny_run):
    run = load_run(tiny_run)
    inspector = Inspector.from_slot(slot)
    memory = inspector.memory
    shipped, memory.ordinary_distance = memory.ordinary_distance, None  # every patch searched, as when measured
    networks = inspector.pipeline.networks
    fine = [memory.scale_distances(networks.knn_features(image))[0] for image in run.holdout_images()]
    assert shipped == pytest.approx(np.quantile(fine, 0.99), rel=1e-4)
    assert shipped != run.memory.ordinary_distance  # the run's was measured through torch


def test_installed_bundle_passes_its_health_check(slot):
    checks = Inspector.from_slot(slot).health_check()
    assert len(checks) == 3
    assert all(check.passed for check in checks), checks


def test_bundle_evaluates_through_the_same_code_path(bundle, keys, tiny_dataset):
    report = evaluate_bundle(bundle[0], [keys[1]], tiny_dataset, "bundle")
    assert report.overall.defect_images == 6
    assert 0.0 <= report.overall.image_auroc <= 1.0 and np.isfinite(report.overall.aupro)


def test_export_cli_binds_the_bundle_to_a_product_and_needs_an_orderable_version(tiny_run, keys, tmp_path, capsys):
    from edge_runtime.bundle import load_trusted_keys, verify_bundle
    from edge_runtime.manifest import SCHEMA_VERSION
    from export.__main__ import main

    out = tmp_path / "tile-1.2.0.tar"
    common = ["bundle", "--run", str(tiny_run), "--out", str(out), "--sign-key", str(keys[0]), "--precision", "fp32"]
    common += ["--gate-images-per-type", "1", "--gate-good-images", "4", "--gate-defects-per-good", "2"]
    assert main([*common, "--model-version", "nightly"]) == 2
    assert "'nightly' is not a version that can be ordered" in capsys.readouterr().err
    assert main([*common, "--model-version", "1.2.0", "--product", "tile-inspector"]) == 2
    assert "product and device class go together" in capsys.readouterr().err
    assert not out.exists(), "both mistakes are caught before anything is exported"

    target = ["--product", "tile-inspector", "--device-class", "line-pc"]
    assert main([*common, "--model-version", "1.2.0", *target]) == 0
    manifest = verify_bundle(out, load_trusted_keys([keys[1]])).manifest
    assert (manifest.schema_version, manifest.model_version) == (SCHEMA_VERSION, "1.2.0")
    assert (manifest.target.product, manifest.target.device_class) == ("tile-inspector", "line-pc")
    assert "for tile-inspector/line-pc" in capsys.readouterr().out
    gate_set = json.loads(out.with_suffix(".export.json").read_text())["gate_set"]
    assert (gate_set["held_out_goods"], gate_set["synthetic_defects"]) == (4, 8)


def test_the_command_line_exports_with_the_builders_own_defaults():
    from export.__main__ import build_parser, export_options
    from export.builder import ExportOptions

    args = build_parser().parse_args(
        ["bundle", "--run", "r", "--out", "b.tar", "--sign-key", "k.pem", "--model-version", "1.0.0"]
    )
    assert export_options(args) == ExportOptions(model_version="1.0.0")
