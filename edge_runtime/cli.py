"""`d3ad`: one command for every job of the product, on the host and on the device.

Each subcommand is the same job as its `python -m train_host|export|demo_line|edge_runtime` form, with the same
arguments. The package behind a subcommand is imported only when that subcommand runs, so the device commands (run,
inspect, bench, validate-config) work where torch and the host packages are not installed.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

PROG = "d3ad"
DISTRIBUTION = "d3ad-inspector"
HOST_EXTRA = "host"  # [project.optional-dependencies] in pyproject.toml: training, evaluation and export
EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    name: str  # as typed after `d3ad`
    package: str  # whose build_parser() and dispatch() run it
    summary: str
    needs_torch: bool = False
    folders_for_files: bool = False  # positional image files may be given as folders (expanded before dispatch)
    original: str = ""  # its name in the package's own command line, when that differs

    @property
    def package_name(self) -> str:
        return self.original or self.name

    @property
    def on_host(self) -> bool:
        return self.package != "edge_runtime"


COMMANDS: tuple[Command, ...] = (
    Command("train", "train_host", "learn good parts from train/good of a dataset", needs_torch=True),
    Command("evaluate", "train_host", "evaluate a run or a bundle on labelled test images", needs_torch=True),
    Command("ablate", "train_host", "run the standard ablation evaluations of a run", needs_torch=True),
    Command("memory-baseline", "train_host", "the KNN patch map alone on the test images", needs_torch=True),
    Command("feedback-cost", "train_host", "recall lost when a bundle's flagged test goods are marked good"),
    # `bench` is the device's benchmark; the torch baseline of train_host gets a name of its own.
    Command("bench-torch", "train_host", "latency of the torch pipeline (the FP32 baseline)", True, original="bench"),
    Command("keygen", "export", "create an Ed25519 signing key pair"),
    Command("bundle", "export", "turn a training run into a signed model bundle", needs_torch=True),
    Command("push", "export", "install a bundle on a device over MQTT, or roll it back"),
    Command("collect", "export", "parts a device kept into an MVTec-layout folder"),
    Command("demo", "demo_line", "train, export and run the edge service end to end", needs_torch=True),
    Command("soak", "demo_line", "the demo model through broker outages and a kill -9, every result checked"),
    Command("run", "edge_runtime", "the streaming service: camera frames in, results out over MQTT"),
    Command("inspect", "edge_runtime", "inspect image files or folders with a bundle", folders_for_files=True),
    Command("bench", "edge_runtime", "latency and throughput of a bundle on real frames"),
    Command("bench-compare", "edge_runtime", "one table from several benchmark reports, with speed ratios"),
    Command("validate-config", "edge_runtime", "check a runtime config and explain every problem"),
)
BY_NAME = {command.name: command for command in COMMANDS}


def package_version() -> str:
    """The installed distribution's version; in a checkout that is not installed, the one pyproject.toml gives."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return pyproject_version(Path(__file__).resolve().parents[1] / "pyproject.toml")


def pyproject_version(path: Path) -> str:
    """`version` of the [project] table; read with a pattern because tomllib only came with Python 3.11."""
    try:
        text = path.read_text()
    except OSError:
        return "unknown"
    table = re.search(r"^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    found = table and re.search(r"^version\s*=\s*[\"']([^\"']+)[\"']", table.group(1), re.MULTILINE)
    return found.group(1) if found else "unknown"


def expand_image_folders(paths: list[Path]) -> list[Path]:
    """Files as given; a folder becomes the image files under it (searched recursively), sorted."""
    from edge_runtime.preprocess import IMAGE_SUFFIXES  # numpy and OpenCV: not needed for --help or --version

    expanded: list[Path] = []
    for path in paths:
        if not path.is_dir():
            expanded.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no image files under {path} (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
        expanded.extend(found)
    return expanded


def expand_folder_arguments(args: argparse.Namespace) -> int | None:
    """Replace the folders among `args.images` by their image files; EXIT_USAGE, said why, when one holds none.
    Both `d3ad` and `python -m edge_runtime` call this, so a folder means the same to either."""
    try:
        args.images = expand_image_folders(args.images)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return None


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Edge visual inspection: train and export on a host, inspect on the device.",
        epilog=f"Host commands need the '{HOST_EXTRA}' extra: pip install '{DISTRIBUTION}[{HOST_EXTRA}]'. "
        f"`{PROG} COMMAND --help` lists a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        where = "host" if command.on_host else "device"
        commands.add_parser(command.name, help=f"{command.summary} [{where}]", add_help=False)
    return parser


def _missing(command: Command, what: str, error: BaseException) -> int:
    print(
        f"error: `{PROG} {command.name}` is a host command and needs {what}, which cannot be imported here "
        f"({error}).\nInstall the host extra: pip install '{DISTRIBUTION}[{HOST_EXTRA}]' (in a clone: make setup)",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _torch_problem() -> BaseException | None:
    try:
        importlib.import_module("torch")
    except (ImportError, OSError) as error:  # OSError: a torch whose native libraries do not load
        return error
    return None


def _command_parser(module: ModuleType, command: Command) -> argparse.ArgumentParser:
    """The package's own parser for the command, named as `d3ad` calls it."""
    parser = module.build_parser(PROG)
    # argparse has no public way to reach a subparser; its subparsers action holds them by name.
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen = subcommands.choices[command.package_name]
    chosen.prog = f"{PROG} {command.name}"
    return chosen


def run_command(command: Command, argv: list[str]) -> int:
    """Parse `argv` (what follows the command's name) with the command's own parser and run it."""
    try:
        module = importlib.import_module(f"{command.package}.__main__")
    except ModuleNotFoundError as error:
        if not command.on_host:
            raise
        return _missing(command, f"the {error.name} package", error)
    args = _command_parser(module, command).parse_args(argv)
    args.command = command.package_name
    if command.needs_torch and (problem := _torch_problem()) is not None:
        return _missing(command, "torch", problem)
    if command.folders_for_files and (problem_exit := expand_folder_arguments(args)) is not None:
        return problem_exit
    return module.dispatch(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `d3ad` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in BY_NAME:
        return run_command(BY_NAME[argv[0]], argv[1:])
    _top_parser().parse_args(argv)  # --help, --version, no command or an unknown one: argparse answers and exits
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
