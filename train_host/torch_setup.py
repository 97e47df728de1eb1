"""Device choice, seeding and progress bars for the training steps."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

T = TypeVar("T")


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but no CUDA GPU is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def seed_everything(seed: int, threads: int | None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads or os.cpu_count() or 1)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on a terminal, sparse log lines otherwise."""
    interactive = sys.stderr.isatty()
    return iter(
        tqdm(
            items,
            desc=description,
            total=total,
            mininterval=0.5 if interactive else 30.0,
            disable=os.environ.get("D3AD_QUIET") == "1",
            dynamic_ncols=True,
        )
    )
