"""Command line: `python -m demo_line demo|soak ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo_line import soak_defaults
from edge_runtime.bundle_errors import BundleError
from edge_runtime.config_errors import ConfigError

PRECISIONS = ["auto", "int8", "fp16", "fp32"]  # as `python -m export bundle --precision`


def build_parser(prog: str = "python -m demo_line") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train, export and run the edge service on a conveyor stream, end to end")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (run, bundle, overlays...)")
    demo.add_argument("--config", type=Path, default=Path("configs/train/demo.yaml"), help="YAML training config")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--synthetic", action="store_true", help="train on generated parts even if the real set exists")
    demo.add_argument("--fresh", action="store_true", help="remove the last demo's outputs and train again")
    demo.add_argument("--no-evaluate", action="store_true", help="skip the evaluation on the labelled test images")
    demo.add_argument("--parts", type=int, default=40, help="test parts on the conveyor")
    demo.add_argument("--fps", type=float, default=2.0, help="conveyor frame rate (frames/s)")
    demo.add_argument("--precision", choices=PRECISIONS, default="auto", help="of the bundle")
    demo.add_argument("--timeout", type=float, default=None, help="seconds to wait for every part's result")
    soak = commands.add_parser(
        "soak", help="stream the demo model through broker outages and a kill -9; check every result arrived once"
    )
    soak.add_argument("--demo", type=Path, default=Path("runs/demo"), help="the folder `make demo` wrote")
    soak.add_argument("--out", type=Path, default=Path("runs/soak"), help="folder for the logs and soak.json")
    soak.add_argument("--duration", type=float, default=soak_defaults.DURATION_S, help="seconds of streaming")
    soak.add_argument(
        "--outage", type=float, default=soak_defaults.OUTAGE_S, help="seconds of each of the two broker outages"
    )
    soak.add_argument("--qos", type=int, choices=[1, 2], default=None, help="QoS of results (default: the service's)")
    soak.add_argument(
        "--camera-fps",
        type=float,
        default=soak_defaults.CAMERA_FPS,
        help="frame rate of the conveyor camera (above the service's rate)",
    )
    soak.add_argument(
        "--steady", action="store_true", help="no outages and no kill: measure the sustained rate and the memory"
    )
    soak.add_argument("--bundle", type=Path, default=None, help="another bundle than the demo's (with --trusted-key)")
    soak.add_argument("--trusted-key", type=Path, default=None, help="public key of --bundle")
    soak.add_argument(
        "--images",
        type=Path,
        default=None,
        help="dataset root (MVTec layout): a conveyor of its test parts at the bundle's input size, in OUT/conveyor",
    )
    soak.add_argument("--parts", type=int, default=40, help="parts on the conveyor built from --images")
    return parser


def _soak(args: argparse.Namespace) -> int:
    """Exit 0 when every check passed, 1 when one failed (soak.json says which), 2 when it could not run."""
    from demo_line.local_line import LocalLineError
    from demo_line.soak import SoakOptions, conveyor_of_test_parts, run_soak

    bundle, trusted_key = args.bundle, args.trusted_key
    if (bundle is None) != (trusted_key is None):
        print("error: --bundle and --trusted-key go together", file=sys.stderr)
        return 2
    if bundle is None:
        bundles = sorted((args.demo / "bundle").glob("*.tar"), key=lambda path: path.stat().st_mtime)
        if not bundles:
            print(f"error: no bundle in {args.demo / 'bundle'}; run `make demo` first", file=sys.stderr)
            return 2
        bundle, trusted_key = bundles[-1], args.demo / "keys" / "demo.pub.pem"
    conveyor = args.demo / "conveyor"
    if args.images is not None:
        conveyor = conveyor_of_test_parts(args.images, bundle, trusted_key, args.out / "conveyor", args.parts)
    try:
        options = SoakOptions(
            bundle=bundle,
            trusted_key=trusted_key,
            conveyor=conveyor,
            out=args.out,
            duration_s=args.duration,
            outage_s=args.outage,
            qos=args.qos,
            camera_fps=args.camera_fps,
            steady=args.steady,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        report = run_soak(options)
    except LocalLineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for check in report.checks:
        print(f"{'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    figures = report.figures
    print(
        f"{figures.results_distinct} results for {figures.frames_inspected} frames inspected in "
        f"{figures.streaming_s:.0f} s ({figures.results_per_s} results/s), {figures.repeats} repeated, "
        f"service peak RSS {figures.service_peak_rss_mb} MB; "
        f"{args.out / 'soak.json'}"
    )
    return 0 if report.passed else 1


def _demo(args: argparse.Namespace) -> int:
    """Exit 0 when every conveyor part got its result, 1 on a timeout (the summary says which are missing)."""
    from demo_line.demo import DemoError, DemoOptions, run_demo
    from demo_line.local_line import LocalLineError

    options = DemoOptions(
        out=args.out,
        config=args.config,
        overrides=tuple(args.overrides),
        synthetic=args.synthetic,
        fresh=args.fresh,
        evaluate=not args.no_evaluate,
        parts=args.parts,
        fps=args.fps,
        precision=args.precision,
        stream_timeout_s=args.timeout,
    )
    try:
        summary = run_demo(options)
    except (DemoError, LocalLineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the broker and the service were stopped on the way out
        print("demo interrupted", file=sys.stderr)
        return 130
    return 1 if summary.timed_out else 0


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; `d3ad` parses with its own program name and calls this too."""
    try:
        return _demo(args) if args.command == "demo" else _soak(args)
    except ConfigError as error:
        print(f"error: {error.explain()}", file=sys.stderr)  # one line per problem
        return 2
    except (BundleError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
