"""Command line: `python -m export keygen|bundle|push|collect ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.bundle import BundleError
from export import gate_defaults
from export.push import PushError
from train_host.config import ConfigError

if TYPE_CHECKING:
    from export.builder import ExportOptions


def _allowance(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser(prog: str = "python -m export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="create an Ed25519 signing key pair")
    keygen.add_argument("--out", type=Path, required=True, help="writes OUT.pem (private) and OUT.pub.pem (public)")
    bundle = commands.add_parser("bundle", help="turn a training run into a signed model bundle")
    bundle.add_argument("--run", type=Path, required=True)
    bundle.add_argument("--out", type=Path, required=True, help="bundle file to write (.tar)")
    bundle.add_argument("--sign-key", type=Path, required=True, help="private key from `keygen`")
    bundle.add_argument("--model-version", required=True, help="a semantic version, e.g. 1.4.0; devices refuse older")
    bundle.add_argument("--product", default=None, help="the product the bundle is for (with --device-class)")
    bundle.add_argument("--device-class", default=None, help="the device class it is for (with --product)")
    bundle.add_argument("--precision", choices=["auto", "int8", "fp16", "fp32"], default="auto")
    gate = (
        "precision gate of --precision auto: largest drop against FP32 allowed (the drop measured on the gate set "
        "may use half of it, its upper confidence bound all of it) for"
    )
    bundle.add_argument("--max-auroc-drop", type=_allowance, default=gate_defaults.MAX_DROP, help=f"{gate} image AUROC")
    bundle.add_argument(
        "--max-pixel-auroc-drop", type=_allowance, default=gate_defaults.MAX_DROP, help=f"{gate} pixel AUROC"
    )
    bundle.add_argument("--max-aupro-drop", type=_allowance, default=gate_defaults.MAX_DROP, help=f"{gate} AUPRO")
    bundle.add_argument(
        "--gate-images-per-type",
        type=_positive,
        default=gate_defaults.IMAGES_PER_TYPE,
        help="labelled test images in the gate",
    )
    bundle.add_argument(
        "--gate-good-images",
        type=_positive,
        default=gate_defaults.GOOD_IMAGES,
        help="held-out goods in the gate, at most",
    )
    bundle.add_argument(
        "--gate-defects-per-good",
        type=_positive,
        default=gate_defaults.DEFECTS_PER_GOOD,
        help="synthetic defects made from each held-out good in the gate, each of another kind",
    )
    bundle.add_argument(
        "--search-ef",
        type=_positive,
        default=None,
        help="HNSW search breadth stored in the bundle's memory (default: the run's memory.ef); gated and "
        "calibrated with it",
    )
    push = commands.add_parser("push", help="install a bundle on a device over MQTT, or roll it back")
    what = push.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", type=Path, help="the bundle file (its version and sha256 go in the command)")
    what.add_argument("--rollback", action="store_true", help="return the device to its previous model")
    push.add_argument("--url", help="where the device fetches the bundle: http(s)://, file:// or a path on the device")
    push.add_argument("--broker", required=True, help="HOST or HOST:PORT of the MQTT broker")
    push.add_argument("--device", required=True, help="the device's mqtt.device_id")
    push.add_argument("--prefix", default="d3ad", help="the device's mqtt.prefix")
    push.add_argument("--username", default=None)
    push.add_argument("--password-file", type=Path, default=None, help="file holding the broker password")
    push.add_argument("--ca-file", type=Path, default=None, help="CA certificate: connect with TLS")
    push.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the device's outcome")
    push.add_argument(
        "--key",
        type=Path,
        default=None,
        help="private site key: sign the command (devices with updates.signed_commands)",
    )
    collect = commands.add_parser(
        "collect", help="parts a device kept into an MVTec-layout folder (train/good from operator feedback)"
    )
    collect.add_argument(
        "--from", dest="source", type=Path, required=True, help="the device's state_dir, or its kept_parts folder"
    )
    collect.add_argument("--out", type=Path, required=True, help="folder to write (an existing dataset is added to)")
    return parser


def _push(args: argparse.Namespace) -> int:
    """Exit 0 when the device switched (or already ran the bundle), 1 when it refused, 2 on a usage problem."""
    from export.push import Broker, Device, install_request, send_command

    host, _, port = args.broker.partition(":")
    password = args.password_file.read_text().splitlines()[0] if args.password_file else None
    broker = Broker(host, int(port or 1883), args.username, password, args.ca_file)
    device = Device(args.device, args.prefix)
    if args.rollback:
        command, body = "rollback", {}
    else:
        if not args.url:
            raise ValueError("--bundle needs --url: where the device fetches it from")
        command, body = "install", install_request(args.bundle, args.url)
        print(f"installing {body['version']} (sha256 {body['sha256'][:12]}...) on {args.device}")
    sign_key = None
    if args.key is not None:
        from export.signing import load_private_key

        sign_key = load_private_key(args.key)
    outcome = send_command(broker, device, command, body, args.timeout, lambda stage: print(f"  {stage}"), sign_key)
    if not outcome.ok:
        print(f"refused: {outcome.reason or 'error'}: {outcome.detail}", file=sys.stderr)
        return 1
    print(f"{outcome.outcome} {outcome.version} on {args.device}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def export_options(args: argparse.Namespace) -> ExportOptions:
    """The builder's options from the `bundle` command's arguments."""
    from export.builder import ExportOptions  # imports torch and OpenVINO: only when a bundle is built

    return ExportOptions(
        model_version=args.model_version,
        precision=args.precision,
        max_auroc_drop=args.max_auroc_drop,
        max_pixel_auroc_drop=args.max_pixel_auroc_drop,
        max_aupro_drop=args.max_aupro_drop,
        gate_images_per_type=args.gate_images_per_type,
        gate_good_images=args.gate_good_images,
        gate_defects_per_good=args.gate_defects_per_good,
        search_ef=args.search_ef,
        product=args.product,
        device_class=args.device_class,
    )


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; `d3ad` parses with its own program name and calls this too."""
    try:
        if args.command == "push":
            return _push(args)
        if args.command == "collect":
            from export.collect import collect

            report = collect(args.source, args.out)
            print(f"collected {len(report.parts)} part(s) into {args.out}:")
            print("\n".join(report.lines()))
            return 0
        if args.command == "keygen":
            from export.signing import generate_keypair

            private, public = args.out.with_suffix(".pem"), args.out.with_suffix(".pub.pem")
            generate_keypair(private, public)
            print(f"private key: {private}\npublic key:  {public} (install this one on devices)")
        else:
            from export.builder import build_bundle

            manifest = build_bundle(args.run, args.out, args.sign_key, export_options(args))
            precisions = ", ".join(f"{n}={s.precision}" for n, s in manifest.networks.items())
            target = f"for {manifest.target.product}/{manifest.target.device_class}" if manifest.target else "unbound"
            print(f"bundle: {args.out} (model {manifest.model_version}, {target}; {precisions})")
    except ConfigError as error:
        print(f"error: {error.explain()}", file=sys.stderr)  # one line per problem
        return 2
    except (BundleError, PushError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
