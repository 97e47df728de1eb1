"""Command line: `python -m train_host train|evaluate ...`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from edge_runtime.bundle_errors import BundleError
from train_host.config import ConfigError, load_config
from train_host.dataset import DatasetError


def build_parser(prog: str = "python -m train_host") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="learn good parts from train/good of a dataset")
    train.add_argument("--config", type=Path, required=True, help="YAML training config")
    train.add_argument("--out", type=Path, required=True, help="run folder to create or resume")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--fresh", action="store_true", help="delete an existing run folder first")
    train.add_argument("--no-evaluate", action="store_true", help="skip the evaluation after training")
    evaluate = commands.add_parser("evaluate", help="evaluate a run on the labelled test images")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a training run (torch networks)")
    source.add_argument("--bundle", type=Path, help="a signed bundle (OpenVINO networks, as on the device)")
    evaluate.add_argument("--trusted-key", type=Path, action="append", default=[], help="public key (with --bundle)")
    evaluate.add_argument("--data", type=Path, help="dataset root (with --bundle)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="inspection.KEY=VALUE")
    evaluate.add_argument("--tag", default=None, help="name of the evaluation (folder under RUN/eval)")
    evaluate.add_argument("--max-per-type", type=int, default=None, help="cap test images per defect type")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    ablate = commands.add_parser("ablate", help="run the standard ablation evaluations of a run")
    ablate.add_argument("--run", type=Path, required=True)
    ablate.add_argument("--only", nargs="*", default=None, metavar="TAG", help="a subset of the ablation tags")
    baseline = commands.add_parser(
        "memory-baseline", help="the KNN patch map alone (PatchCore-style, nothing trained) on the test images"
    )
    baseline.add_argument("--config", type=Path, required=True, help="YAML training config")
    baseline.add_argument("--out", type=Path, required=True, help="folder for the report")
    baseline.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cost = commands.add_parser(
        "feedback-cost", help="recall lost when a bundle's false alarms on the test goods are marked good on the device"
    )
    cost.add_argument("--bundle", type=Path, required=True, help="a signed bundle")
    cost.add_argument("--trusted-key", type=Path, action="append", required=True, help="public key")
    cost.add_argument("--data", type=Path, required=True, help="dataset root (its test/ folder is used)")
    cost.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    bench = commands.add_parser("bench", help="latency of the torch pipeline (the FP32 baseline)")
    bench.add_argument("--run", type=Path, required=True)
    bench.add_argument("--images", type=Path, required=True, help="folder of frames (searched recursively)")
    bench.add_argument("--frames", type=int, default=50)
    bench.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    bench.add_argument("--threads", type=int, default=None)
    bench.add_argument("--out", type=Path, default=None)
    return parser


def _evaluate(run: Path, overrides: list[str], tag: str | None, max_per_type: int | None, device: str | None) -> None:
    from train_host.evaluation import evaluate
    from train_host.report import metrics_table, write_report

    name = tag or "default"
    report = evaluate(run, overrides, name, max_per_type, device)
    path = write_report(report, run / "eval" / name)
    print(metrics_table(report))
    print(f"report: {path}")


def _evaluate_bundle(args: argparse.Namespace) -> None:
    from train_host.evaluation import evaluate_bundle
    from train_host.report import metrics_table, write_report

    if args.data is None or not args.trusted_key:
        raise ConfigError("--bundle needs --data DATASET_ROOT and at least one --trusted-key PUBLIC_KEY")
    if args.overrides:
        raise ConfigError("--set cannot be used with --bundle: a bundle's settings are fixed when it is signed")
    name = args.tag or args.bundle.stem
    report = evaluate_bundle(args.bundle, args.trusted_key, args.data, name, args.max_per_type)
    path = write_report(report, args.bundle.parent / f"{args.bundle.stem}-eval" / name)
    print(metrics_table(report))
    print(f"report: {path}")


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; `d3ad` parses with its own program name and calls this too."""
    try:
        if args.command == "train":
            from train_host.training import train

            config = load_config(args.config, args.overrides)
            if args.fresh and args.out.exists():
                shutil.rmtree(args.out)
            train(config, args.out)
            if not args.no_evaluate:
                _evaluate(args.out, [], None, None, None)
        elif args.command == "bench":
            import json

            from edge_runtime.bench import format_report
            from train_host.benchmark import benchmark_torch

            report = benchmark_torch(args.run, args.images, args.frames, args.steps, args.threads)
            print(format_report(report))
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report.to_dict(), indent=2))
        elif args.command == "memory-baseline":
            from train_host.memory_baseline import evaluate_memory_only
            from train_host.report import metrics_table, write_report

            report = evaluate_memory_only(load_config(args.config, args.overrides))
            path = write_report(report, args.out)
            print(metrics_table(report))
            print(f"report: {path}")
        elif args.command == "feedback-cost":
            from train_host.feedback_cost import measure_feedback_cost, write_feedback_cost

            cost = measure_feedback_cost(args.bundle, args.trusted_key, args.data)
            print(cost.table())
            if args.out:
                write_feedback_cost(cost, args.out)
        elif args.command == "ablate":
            from train_host.ablation import ablation_table, run_ablations

            table = ablation_table(args.run, run_ablations(args.run, args.only))
            (args.run / "eval" / "ablation.md").write_text(table + "\n")
            print(table)
        elif args.bundle is not None:
            _evaluate_bundle(args)
        else:
            _evaluate(args.run, args.overrides, args.tag, args.max_per_type, args.device)
    except ConfigError as error:
        print(f"error: {error.explain()}", file=sys.stderr)  # one line per problem
        return 2
    except (DatasetError, BundleError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
