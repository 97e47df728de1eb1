"""Command line of the device runtime: `python -m edge_runtime inspect|bench|run|validate-config ...`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.bundle import BundleError, temporary_slot
from edge_runtime.preprocess import FrameError
from edge_runtime.settings import InspectionSettings

if TYPE_CHECKING:  # for annotations only: the inspector loads OpenVINO, which only some commands need
    import numpy as np

    from edge_runtime.inspector import Inspector
    from edge_runtime.results import InspectionResult

# Exit statuses of `run`. systemd's unit lists EXIT_BAD_CONFIG in RestartPreventExitStatus: restarting cannot
# fix a config, an operator must. A damaged model may be put right (a file restored, a disk remounted), so
# EXIT_NO_MODEL is retried.
EXIT_BAD_CONFIG = 2
EXIT_NO_MODEL = 3


def _add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="signed bundle archive (verified, installed to a temp slot)")
    source.add_argument("--slot", type=Path, help="an installed bundle folder")
    parser.add_argument("--trusted-key", type=Path, action="append", default=[], help="public key (with --bundle)")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO inference threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="OpenVINO compiled-model cache")


def build_parser(prog: str = "python -m edge_runtime") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="inspect image files with a bundle and print the verdicts")
    _add_bundle_arguments(inspect)
    inspect.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write an overlay per image (same relative path), results.jsonl and report.md here",
    )
    inspect.add_argument(
        "images",
        type=Path,
        nargs="+",
        help="image files, or folders: their image files, searched recursively, sorted by path",
    )
    bench = commands.add_parser("bench", help="latency and throughput of a bundle on real frames")
    _add_bundle_arguments(bench)
    bench.add_argument("--images", type=Path, required=True, help="folder of frames (searched recursively)")
    bench.add_argument("--frames", type=int, default=50)
    bench.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="denoising steps to measure")
    bench.add_argument("--no-throughput", action="store_true", help="skip the throughput-mode measurement")
    bench.add_argument(
        "--memory-only",
        action="store_true",
        help="time the KNN patch map alone (the PatchCore-style baseline): no healing, one step count (0)",
    )
    bench.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    compare = commands.add_parser("bench-compare", help="one Markdown table from several benchmark JSON reports")
    compare.add_argument("reports", type=Path, nargs="+", help="JSON written by bench / bench-torch --out")
    compare.add_argument(
        "--steps",
        type=int,
        default=InspectionSettings().denoise_steps,
        help="the step count to compare at (default: the default configuration's)",
    )
    compare.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    run = commands.add_parser("run", help="the streaming service: camera frames in, results out over MQTT")
    run.add_argument("--config", type=Path, required=True, help="runtime config (configs/runtime/*.yaml)")
    validate = commands.add_parser("validate-config", help="check a runtime config and explain every problem")
    validate.add_argument("config", type=Path)
    validate.add_argument(
        "--offline",
        action="store_true",
        help="check the schema only, e.g. on a host: missing files and folders are listed as notices (exit 0), "
        "the camera pipeline is not built",
    )
    return parser


@contextmanager
def _installed_slot(args: argparse.Namespace) -> Iterator[Path]:
    if args.slot is not None:
        yield args.slot
        return
    if not args.trusted_key:
        raise BundleError("bad_signature", "--bundle needs at least one --trusted-key to verify it against")
    with temporary_slot(args.bundle, args.trusted_key, prefix="edge-slot-") as slot:
        yield slot


def _inspect(args: argparse.Namespace) -> None:
    from edge_runtime.inspect_output import InspectOutput, check_out_folder, overlay_names
    from edge_runtime.inspector import Inspector
    from edge_runtime.openvino_networks import RuntimeOptions

    # Checked before the model loads: a typo should not cost the compile time, nor leave half a run behind.
    for path in args.images:
        if not path.exists():
            raise FileNotFoundError(f"no such image file or folder: {path}")
    names: list[Path] = []  # where each image's overlay goes under --out
    if args.out is not None:
        check_out_folder(args.out, args.images)
        names = overlay_names(args.images)
    with _installed_slot(args) as slot:
        inspector = Inspector.from_slot(slot, RuntimeOptions(threads=args.threads, cache_dir=args.cache_dir))
        if args.out is None:
            for path in args.images:
                _inspect_one(inspector, path)
            return
        thresholds = (inspector.calibration.image_threshold, inspector.calibration.pixel_threshold)
        with InspectOutput(args.out, inspector.model_version, *thresholds) as output:
            for path, name in zip(args.images, names, strict=True):
                output.add(path, name, *_inspect_one(inspector, path))
    flagged = sum(verdict.is_defect for verdict in output.verdicts)
    print(f"{len(output.verdicts)} image(s), {flagged} flagged as defects; overlays, results and report in {args.out}")


def _inspect_one(inspector: Inspector, path: Path) -> tuple[np.ndarray, InspectionResult]:
    """Read and inspect one image, print its verdict line; the image as read and the result."""
    from edge_runtime.preprocess import read_image_file

    image = read_image_file(path)
    result = inspector.inspect(image)
    verdict = "DEFECT" if result.is_defect else "good"
    print(
        f"{path}: {verdict} score={result.score:.3f} bin={result.severity_bin} t={result.timestep} "
        f"steps={result.steps} regions={len(result.regions)} {result.timings_ms['total']:.1f} ms"
    )
    return image, result


def _bench(args: argparse.Namespace) -> None:
    from edge_runtime.bench import (
        StepsBenchmark,
        format_report,
        load_frames,
        measure_latency,
        measure_throughput,
        memory_only,
        peak_rss_mb,
        report_header,
    )
    from edge_runtime.inspector import Inspector, InspectorPool
    from edge_runtime.openvino_networks import RuntimeOptions

    frames = load_frames(args.images, args.frames)
    options = RuntimeOptions(threads=args.threads, cache_dir=args.cache_dir)
    step_counts = [0] if args.memory_only else args.steps
    with _installed_slot(args) as slot:
        inspector = Inspector.from_slot(slot, options)
        if args.memory_only:
            inspector.calibration = memory_only(inspector.calibration)
        settings_for = {s: inspector.manifest.inspection.model_copy(update={"denoise_steps": s}) for s in step_counts}
        latency = {}
        for steps, settings in settings_for.items():
            pipeline = inspector.new_pipeline(settings)
            latency[steps] = measure_latency(lambda frame, p=pipeline: inspector.inspect(frame, p), frames)
        # Before the throughput copy is compiled: what a service running one hint holds.
        rss_latency_mode = peak_rss_mb()
        throughput: dict[int, tuple[float, int]] = {}
        if not args.no_throughput:
            busy = Inspector(inspector.manifest, slot, replace(options, performance_hint="THROUGHPUT"))
            busy.calibration = inspector.calibration
            workers = max(2, busy.compiled.optimal_requests())
            for steps, settings in settings_for.items():
                pool = InspectorPool(busy, workers, settings)
                measure_throughput(pool.submit, frames[:workers])  # warm every worker
                throughput[steps] = (measure_throughput(pool.submit, frames), workers)
                pool.close()
        runs = [
            StepsBenchmark(
                steps=steps,
                frames=len(frames),
                end_to_end=latency[steps][0],
                stages=latency[steps][1],
                fps_latency_mode=latency[steps][2],
                fps_throughput_mode=throughput.get(steps, (None, None))[0],
                throughput_workers=throughput.get(steps, (None, None))[1],
            )
            for steps in step_counts
        ]
        precisions = ",".join(sorted({n.precision for n in inspector.manifest.networks.values()}))
        kind = "memory only" if args.memory_only else precisions
        label = f"bundle {inspector.model_version} ({kind})"
        report = report_header(label, runs, os.cpu_count() or 1, rss_latency_mode)
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.to_dict(), indent=2))


def _bench_compare(args: argparse.Namespace) -> None:
    from edge_runtime.bench_compare import compare_reports

    tables = compare_reports(args.reports, args.steps)
    print(tables)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(tables + "\n")


def _checked_config(path: Path):  # noqa: ANN202 - ServiceConfig, imported lazily
    """The config, with the camera pipeline's syntax and elements checked too; raises ConfigError."""
    from edge_runtime.service.frames import pipeline_problem
    from edge_runtime.service.service_config import ConfigError, load_config

    config = load_config(path)
    problem = pipeline_problem(config.camera.pipeline)
    if problem is not None:
        raise ConfigError(str(path), [f"camera.pipeline: {problem}"])
    return config


def _validate_config(args: argparse.Namespace) -> int:
    from edge_runtime.service.service_config import ConfigError, summary

    if args.offline:
        return _validate_config_offline(args.config)
    try:
        config = _checked_config(args.config)
    except ConfigError as error:
        print(error.explain(), file=sys.stderr)
        return 2
    print(f"{args.config}: valid\n{summary(config)}")
    return 0


def _validate_config_offline(path: Path) -> int:
    """The schema only: where the config is written, its bundle, keys and state are usually not there yet."""
    from edge_runtime.service.service_config import ConfigError, file_problems, read_config, summary

    try:
        config = read_config(path)
    except ConfigError as error:
        print(error.explain(), file=sys.stderr)
        return 2
    missing = file_problems(config)
    print(f"{path}: schema valid (offline: files not required, camera pipeline not built)")
    for problem in missing:
        print(f"notice: {problem}")
    if missing:
        print(f"notice: {len(missing)} file(s) or folder(s) missing here; the full check without --offline needs them")
    print(summary(config))
    return 0


def _run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge_runtime.service.log_setup import configure_logging, error_lines
    from edge_runtime.service.model_startup import ModelUnavailable
    from edge_runtime.service.observers import standard_observers
    from edge_runtime.service.publisher import CredentialError
    from edge_runtime.service.service import Service
    from edge_runtime.service.service_config import ConfigError

    try:
        config = _checked_config(args.config)
    except ConfigError as error:
        print(error_lines(f"{error.explain()}\nerror: refusing to start with an invalid config"), file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_logging(config.log_level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        Service(config, observers=standard_observers(config)).run(stop)
    except CredentialError as error:
        print(error_lines(f"error: {error}"), file=sys.stderr)
        return EXIT_BAD_CONFIG
    except ModelUnavailable as error:
        print(error_lines(f"error: {error}; exiting with status {EXIT_NO_MODEL} to be started again"), file=sys.stderr)
        return EXIT_NO_MODEL
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "inspect":
        from edge_runtime.cli import expand_folder_arguments

        if (problem_exit := expand_folder_arguments(args)) is not None:
            return problem_exit
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; `d3ad` parses with its own program name and calls this too."""
    if args.command == "validate-config":
        return _validate_config(args)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "inspect":
            _inspect(args)
        elif args.command == "bench-compare":
            _bench_compare(args)
        else:
            _bench(args)
    except (BundleError, FrameError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. an --out folder that cannot be written
        if args.command == "run":
            raise  # the service's own exit statuses decide whether systemd starts it again
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
