"""The distance between two images as the feature map sees it, as a training loss."""

from __future__ import annotations

import torch


def stagewise_cosine_loss(first: list[torch.Tensor], second: list[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of the mean (1 - cosine similarity) per position."""
    return sum(
        (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)).mean() for a, b in zip(first, second, strict=True)
    )
