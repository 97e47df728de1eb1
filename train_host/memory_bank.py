"""Building the KNN memory from good images: features, random projection, greedy coreset, HNSW index."""

from __future__ import annotations

import numpy as np
import torch

from edge_runtime.knn import KnnMemory, build_index, describe, ordinary_distance_of, split_scales
from train_host.backbone import Backbone
from train_host.config import MemoryConfig
from train_host.torch_setup import progress


@torch.inference_mode()
def stage_maps_of(backbone: Backbone, images: np.ndarray, device: torch.device, batch_size: int = 16):
    """Yields each image's stage maps as numpy arrays (CxHxW each, finest first)."""
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        stages = [stage.cpu().numpy() for stage in backbone(batch)]
        for i in range(len(batch)):
            yield [stage[i] for stage in stages]


def random_projection(input_dim: int, output_dim: int | None, seed: int) -> np.ndarray | None:
    """A scaled Gaussian projection, which keeps distances roughly intact (Johnson-Lindenstrauss)."""
    if output_dim is None or output_dim >= input_dim:
        return None
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((input_dim, output_dim)) / np.sqrt(output_dim)).astype(np.float32)


def selection_space(vectors: np.ndarray, dim: int | None, seed: int) -> np.ndarray:
    """Vectors as the coreset selection sees them: projected to `dim` (distances roughly kept, much cheaper)."""
    selection = random_projection(vectors.shape[1], dim, seed + 1)
    if selection is None:
        return vectors
    return np.ascontiguousarray(vectors @ selection, dtype=np.float32)


def greedy_coreset(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a k-center greedy subset: each pick is the vector farthest from those already picked."""
    count = len(vectors)
    if size >= count:
        return np.arange(count)
    # numpy's BLAS matrix-vector product: torch.mv over the same row-major pool ran 3-4x slower on a 2-core EPYC
    # (12.7 against 3.4 ms per pick for 163,000 x 128), and the picks are one product each.
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    squared_norms = np.einsum("ij,ij->i", data, data)
    first = int(np.random.default_rng(seed).integers(count))
    selected = [first]
    # Squared distance via |a|^2 - 2 a.b + |b|^2: one matrix-vector product per pick, into reused buffers (a fresh
    # pool-sized array per pick made the selection several times slower, most of it spent allocating).
    nearest = squared_norms - 2 * (data @ data[first]) + squared_norms[first]
    to_pick = np.empty_like(nearest)
    for _ in progress(range(size - 1), "coreset"):
        pick = int(np.argmax(nearest))
        selected.append(pick)
        np.dot(data, data[pick], out=to_pick)
        to_pick *= -2.0
        to_pick += squared_norms
        to_pick += squared_norms[pick]
        np.minimum(nearest, to_pick, out=nearest)
    return np.asarray(selected)


def build_memory(
    backbone: Backbone,
    images: np.ndarray,
    config: MemoryConfig,
    device: torch.device,
    seed: int,
    fine_stage_count: int | None = None,
) -> KnnMemory:
    """The memory of the backbone's stage maps; with `fine_stage_count` (patch mode only) the maps after the first
    `fine_stage_count` fill a coarse memory of their own, searched on their own grid."""
    coarse = config.mode == "patch" and fine_stage_count is not None
    fine_vectors, coarse_vectors = [], []
    for maps in stage_maps_of(backbone, images, device):
        fine_maps, coarse_maps = split_scales(maps, fine_stage_count if coarse else None)
        fine_vectors.append(describe(config.mode, fine_maps, None)[0])
        if coarse:
            coarse_vectors.append(describe("patch", coarse_maps, None, context=False)[0])
    memory = _memory_of(np.concatenate(fine_vectors), config, config.coreset_size, seed)
    if coarse:
        memory.stage_count = fine_stage_count
        memory.coarse = _memory_of(np.concatenate(coarse_vectors), config, config.coarse_coreset_size, seed)
        memory.coarse.context = False
    return memory


def _memory_of(vectors: np.ndarray, config: MemoryConfig, coreset_size: int, seed: int) -> KnnMemory:
    """One scale's memory: sampled pool, optional projection, greedy coreset (patch mode), HNSW index."""
    rng = np.random.default_rng(seed)
    projection = random_projection(vectors.shape[1], config.projection_dim, seed)
    if config.mode == "patch" and len(vectors) > config.coreset_pool:
        vectors = vectors[rng.choice(len(vectors), config.coreset_pool, replace=False)]
    if projection is not None:
        vectors = vectors @ projection
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if config.mode == "patch":
        picked = greedy_coreset(selection_space(vectors, config.selection_dim, seed), coreset_size, seed)
        vectors = vectors[picked]
    index = build_index(vectors, ef=max(config.ef, config.k), connections=config.connections, seed=seed)
    return KnnMemory(mode=config.mode, index=index, projection=projection, neighbours=config.k)


def measure_typical_distances(memory: KnnMemory, backbone: Backbone, images: np.ndarray, device: torch.device) -> None:
    """Sets each scale's typical distance: the median nearest-neighbour distance of the held-out good images'
    patches on it. Two scales are joined in these units (`edge_runtime.knn.join_scales`), and operator feedback
    teaches the device only the patches beyond them (`edge_runtime.service.feedback.known_distance`). Also sets the
    fine scale's ordinary distance, the 99 % quantile, below which its map is searched sparsely
    (`KnnMemory.sparse_distances`; a bundle measures it again through its own networks); the coarse scale's 64 or so
    queries are searched in full."""
    memory.ordinary_distance = None  # measured with every patch searched
    fine, coarse = [], []
    for maps in stage_maps_of(backbone, images, device):
        fine_map, coarse_map = memory.scale_distances(maps)
        fine.append(fine_map.ravel())
        if coarse_map is not None:
            coarse.append(coarse_map.ravel())
    memory.typical_distance = _typical(fine)
    if memory.mode == "patch":
        memory.ordinary_distance = ordinary_distance_of(fine)
    if memory.coarse is not None:
        memory.coarse.typical_distance = _typical(coarse)


def _typical(distances: list[np.ndarray]) -> float | None:
    """The median distance; None when it is zero (most held-out patches stored exactly, as on flat synthetic
    parts): no unit to measure in."""
    median = float(np.median(np.concatenate(distances)))
    return median if median > 0.0 else None
