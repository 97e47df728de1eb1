"""Command line: `python -m export keygen|bundle ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_runtime.bundle import BundleError
from train_host.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="create an Ed25519 signing key pair")
    keygen.add_argument("--out", type=Path, required=True, help="writes OUT.pem (private) and OUT.pub.pem (public)")
    bundle = commands.add_parser("bundle", help="turn a training run into a signed model bundle")
    bundle.add_argument("--run", type=Path, required=True)
    bundle.add_argument("--out", type=Path, required=True, help="bundle file to write (.tar)")
    bundle.add_argument("--sign-key", type=Path, required=True, help="private key from `keygen`")
    bundle.add_argument("--model-version", required=True)
    bundle.add_argument("--precision", choices=["auto", "int8", "fp16", "fp32"], default="auto")
    bundle.add_argument("--max-auroc-drop", type=float, default=0.01, help="accuracy gate for auto precision")
    bundle.add_argument("--gate-images-per-type", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            from export.signing import generate_keypair

            private, public = args.out.with_suffix(".pem"), args.out.with_suffix(".pub.pem")
            generate_keypair(private, public)
            print(f"private key: {private}\npublic key:  {public} (install this one on devices)")
        else:
            from export.builder import ExportOptions, build_bundle

            options = ExportOptions(
                model_version=args.model_version,
                precision=args.precision,
                max_auroc_drop=args.max_auroc_drop,
                gate_images_per_type=args.gate_images_per_type,
            )
            manifest = build_bundle(args.run, args.out, args.sign_key, options)
            precisions = ", ".join(f"{n}={s.precision}" for n, s in manifest.networks.items())
            print(f"bundle: {args.out} (model {manifest.model_version}; {precisions})")
    except (ConfigError, BundleError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
