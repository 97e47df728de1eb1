"""KNN memory of good-image features, searched with HNSW (hnswlib).

Two variants: `patch` (a PatchCore-style bank of local features: an image severity and a patch distance map)
and `image` (the paper's one vector per image: a severity only). A patch memory may carry a coarse memory of its
own: the stride-32 stage searched on its own grid, its distances joined with the fine map's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import hnswlib
import numpy as np

MemoryMode = Literal["patch", "image"]
IMAGE_POOL_SIZE = 16
COARSE_FOLDER = "coarse"  # the coarse memory's sub-folder of a memory folder


OPENCV_MAX_CHANNELS = 128  # cv2 filters and resizes take at most this many channels per array
# hnswlib computes L2 in blocks of 16 floats and takes a much slower path for the rest of a width that is not a
# multiple of 16: the 232-wide fine vectors searched 1.6x faster zero-padded to 240 (docs/BENCHMARKS.md). Zeros
# added to every vector change no distance.
SEARCH_WIDTH_MULTIPLE = 16
# A patch whose searched neighbours all lie within what 99 % of held-out good patches reach is not searched itself
# (KnnMemory.sparse_distances). The same quantile sets the scale of each map (calibration.map_scale_quantile).
ORDINARY_QUANTILE = 0.99


def search_width(width: int) -> int:
    """The width an index stores vectors of `width` values at: the next multiple of SEARCH_WIDTH_MULTIPLE."""
    return -(-width // SEARCH_WIDTH_MULTIPLE) * SEARCH_WIDTH_MULTIPLE


def pad_to_width(vectors: np.ndarray, width: int) -> np.ndarray:
    """N x D vectors with zeros appended up to `width` columns (memories saved unpadded keep D = width)."""
    count, own_width = vectors.shape
    if own_width == width:
        return vectors
    if own_width > width:
        raise ValueError(f"vectors are {own_width} wide, wider than the memory's {width}")
    padded = np.zeros((count, width), dtype=np.float32)
    padded[:, :own_width] = vectors
    return padded


def _channel_groups(stage_map: np.ndarray) -> list[np.ndarray]:
    """A CxHxW map in slices of at most OPENCV_MAX_CHANNELS channels (the stride-32 stage alone has 192)."""
    return [stage_map[start : start + OPENCV_MAX_CHANNELS] for start in range(0, len(stage_map), OPENCV_MAX_CHANNELS)]


def _channels_last(stage_map: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(stage_map.transpose(1, 2, 0), dtype=np.float32)


def _box_filter(channels_last: np.ndarray) -> np.ndarray:
    """The 3x3 mean of an HxWxC map, edges repeated, as HxWxC: each patch sees a little context."""
    return cv2.blur(channels_last, (3, 3), borderType=cv2.BORDER_REPLICATE).reshape(channels_last.shape)


def _resize_channels(stage_map: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """A CxHxW map resized to (height, width), returned channels last."""
    height, width = size
    resized = [
        cv2.resize(group.transpose(1, 2, 0), (width, height), interpolation=interpolation).reshape(height, width, -1)
        for group in _channel_groups(stage_map)
    ]
    return np.concatenate(resized, axis=2)


def patch_vectors(
    stage_maps: Sequence[np.ndarray], context: bool = True, width: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Stage maps (CxHxW each, finest first) -> (H*W, sum C) patch vectors on the finest grid, and the grid.
    With `context` each patch is the 3x3 mean around it; the coarse memory goes without (a stride-32 cell already
    sees a wide area; there the mean cost image AUROC, docs/RESULTS.md). With `width` the vectors come zero-padded
    to that many columns, as an index stores them. Each group of channels is written straight into the result:
    this runs on every frame, and the copies between stages cost more than the filters."""
    grid = (int(stage_maps[0].shape[1]), int(stage_maps[0].shape[2]))
    channel_count = sum(len(stage_map) for stage_map in stage_maps)
    vectors = np.zeros((grid[0], grid[1], max(width or 0, channel_count)), dtype=np.float32)
    column = 0
    for stage_map in stage_maps:
        for group in _channel_groups(stage_map):
            columns = _channels_last(group)
            if context:
                columns = _box_filter(columns)
            if columns.shape[:2] != grid:
                columns = cv2.resize(columns, (grid[1], grid[0]), interpolation=cv2.INTER_LINEAR)
            vectors[:, :, column : column + len(group)] = columns.reshape(grid[0], grid[1], -1)
            column += len(group)
    return vectors.reshape(grid[0] * grid[1], -1), grid


def image_vector(stage_maps: Sequence[np.ndarray]) -> np.ndarray:
    """The paper's image descriptor: each stage pooled to 16x16, flattened and concatenated."""
    pooled = [
        _resize_channels(stage_map.astype(np.float32), (IMAGE_POOL_SIZE, IMAGE_POOL_SIZE), cv2.INTER_AREA)
        for stage_map in stage_maps
    ]
    return np.concatenate([p.reshape(-1) for p in pooled])[None, :].astype(np.float32)


def describe(
    mode: MemoryMode,
    stage_maps: Sequence[np.ndarray],
    projection: np.ndarray | None,
    context: bool = True,
    width: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Memory vectors of one image (patch grid or a single image vector), projected if configured; unprojected
    patch vectors come zero-padded to `width` columns when it is given."""
    if mode == "patch":
        vectors, grid = patch_vectors(stage_maps, context, width if projection is None else None)
    else:
        vectors, grid = image_vector(stage_maps), (1, 1)
    if projection is not None:
        vectors = vectors @ projection
    return np.ascontiguousarray(vectors, dtype=np.float32), grid


@dataclass(frozen=True)
class Severity:
    distance: float
    patch_map: np.ndarray | None


class ExtraMemory(Protocol):
    """More good vectors searched beside the bundle's index (the device's feedback overlay)."""

    def nearest_squared(self, vectors: np.ndarray, neighbours: int) -> np.ndarray | None: ...


def merge_nearest(squared: np.ndarray, extra: np.ndarray | None, neighbours: int) -> np.ndarray:
    """The k smallest of both neighbour lists per row: the search over the union of both memories."""
    if extra is None:
        return squared
    return np.sort(np.concatenate([squared, extra], axis=1), axis=1)[:, :neighbours]


def split_scales(
    stage_maps: Sequence[np.ndarray], fine_count: int | None
) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray]]:
    """The backbone's stage maps (finest first) as (the fine memory's, the coarse memory's); all are fine when
    `fine_count` is None."""
    if fine_count is None:
        return stage_maps, []
    return stage_maps[:fine_count], stage_maps[fine_count:]


def join_scales(
    fine_map: np.ndarray, coarse_map: np.ndarray, fine_unit: float = 1.0, coarse_unit: float = 1.0
) -> np.ndarray:
    """The two scales' distances as one map on the fine grid: sqrt(fine^2 + coarse^2), the distance a joint
    vector of both scales would have if each scale's nearest neighbour were the same patch (a lower bound). Each
    scale is first divided by its unit, so that neither outweighs the other by the size of its feature space."""
    height, width = fine_map.shape
    coarse_on_fine = cv2.resize(coarse_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    fine, coarse = fine_map / fine_unit, coarse_on_fine / coarse_unit
    return np.sqrt(fine * fine + coarse * coarse).astype(np.float32)


@dataclass
class KnnMemory:
    mode: MemoryMode
    index: hnswlib.Index
    projection: np.ndarray | None
    neighbours: int
    extra: ExtraMemory | None = None  # never saved: the bundle's memory stays as signed
    # Threads per search (a device setting, not saved): the queries of one image are independent, so in latency
    # mode both cores halve the search; with several frames in flight one each avoids oversubscription.
    query_threads: int = 1
    # How many of the backbone's stage maps (finest first) this memory describes; the rest belong to `coarse`.
    stage_count: int | None = None
    context: bool = True  # 3x3 mean around each patch (see patch_vectors)
    # The coarser stages searched on their own grid, in a memory of their own: 64 queries at 256 px instead of
    # widening all 1,024 fine vectors, and the fine map keeps its own nearest neighbours.
    coarse: KnnMemory | None = None
    # The median nearest-neighbour distance of held-out good patches on this scale (None: not measured). With both
    # scales' measured, each is divided by its own before they are joined: magnetic_tile's coarse distances ran
    # about 1.3x its fine ones and outweighed them (docs/RESULTS.md).
    typical_distance: float | None = None
    # The distance 99 % of held-out good patches stay within on this scale (None: not measured). With it, a patch
    # map is searched sparsely: half the patches on a checkerboard, the other half only where a searched neighbour
    # lies beyond it (see `sparse_distances`).
    ordinary_distance: float | None = None

    def scales(self) -> list[KnnMemory]:
        """This memory and its coarse one, finest first."""
        return [self] if self.coarse is None else [self, self.coarse]

    def use_threads(self, threads: int) -> None:
        for scale in self.scales():
            scale.query_threads = threads

    def own_maps(self, stage_maps: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        """The stage maps this memory describes (the first `stage_count`)."""
        return split_scales(stage_maps, self.stage_count)[0]

    def coarse_maps(self, stage_maps: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        """The stage maps of the coarse memory (those after this memory's own)."""
        return split_scales(stage_maps, self.stage_count)[1]

    def describe(self, stage_maps: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[int, int]]:
        """The vectors stored in (and queried against) this memory for one image, as wide as its index."""
        vectors, grid = describe(self.mode, self.own_maps(stage_maps), self.projection, self.context, self.index.dim)
        return pad_to_width(vectors, self.index.dim), grid

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """Mean distance of each vector to its k nearest good vectors (bundle memory and any extra memory)."""
        vectors = pad_to_width(vectors, self.index.dim)
        _, squared = self.index.knn_query(vectors, k=self.neighbours, num_threads=self.query_threads)
        extra = self.extra.nearest_squared(vectors, self.neighbours) if self.extra is not None else None
        squared = merge_nearest(squared, extra, self.neighbours)
        return np.sqrt(np.maximum(squared, 0.0)).mean(axis=1)

    def own_distances(self, stage_maps: Sequence[np.ndarray]) -> np.ndarray:
        """This scale's distances alone: one per image vector, or a map on this scale's patch grid."""
        vectors, grid = self.describe(stage_maps)
        if self.mode == "image":
            return self.distances(vectors)
        if self.ordinary_distance is not None:
            return self.sparse_distances(vectors, grid)
        return self.distances(vectors).reshape(grid).astype(np.float32)

    def sparse_distances(self, vectors: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """The patch map with about half the search: the patches on one colour of a checkerboard are searched;
        each of the others only when one of its four searched neighbours lies farther than `ordinary_distance`, and
        otherwise takes their mean. Where every neighbour is as near as 99 % of good patches are, the patch between
        them is ordinary too (the 3x3 mean already mixes each patch into its neighbours' vectors); a defect raises a
        neighbour and is searched exactly. Measured on both example sets: image and pixel AUROC within 0.0024 of the
        full search, the KNN stage about a fifth faster (docs/RESULTS.md)."""
        first, neighbour_count = _checkerboard(grid)
        distances = np.empty(len(vectors), dtype=np.float32)
        distances[first] = self.distances(vectors[first])
        around_max, around_mean = _around_second_half(distances, first, neighbour_count, grid)
        searched = ~first & (around_max > self.ordinary_distance)
        if searched.any():
            distances[searched] = self.distances(vectors[searched])
        estimated = ~first & ~searched
        distances[estimated] = around_mean[estimated]
        return distances.reshape(grid)

    def scale_distances(self, stage_maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(this scale's distances, the coarse scale's distance map or None), each in its own units, not joined."""
        own = self.own_distances(stage_maps)
        if self.coarse is None:
            return own, None
        # A coarse memory is a patch memory (checked at load), so its distances are a map.
        return own, self.coarse.own_distances(self.coarse_maps(stage_maps))

    def scale_units(self) -> tuple[float, float]:
        """(fine, coarse) units the scales are divided by before they are joined; 1 where not measured."""
        coarse = self.coarse.typical_distance if self.coarse is not None else None
        if self.typical_distance is None or coarse is None:
            return 1.0, 1.0
        return self.typical_distance, coarse

    def severity(self, stage_maps: Sequence[np.ndarray]) -> Severity:
        distances, coarse_map = self.scale_distances(stage_maps)
        if self.mode == "image":
            return Severity(distance=float(distances[0]), patch_map=None)
        patch_map = distances if coarse_map is None else join_scales(distances, coarse_map, *self.scale_units())
        return Severity(distance=float(patch_map.max()), patch_map=patch_map)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.index.save_index(str(folder / "memory.hnsw"))
        if self.projection is not None:
            np.save(folder / "projection.npy", self.projection)
        meta = {
            "mode": self.mode,
            "dim": self.index.dim,
            "count": self.index.get_current_count(),
            "neighbours": self.neighbours,
            "ef": self.index.ef,
            "stage_count": self.stage_count,
            "context": self.context,
            "coarse": COARSE_FOLDER if self.coarse is not None else None,
            "typical_distance": self.typical_distance,
            "ordinary_distance": self.ordinary_distance,
        }
        (folder / "memory.json").write_text(json.dumps(meta, indent=2))
        if self.coarse is not None:
            self.coarse.save(folder / COARSE_FOLDER)

    @classmethod
    def load(cls, folder: Path) -> KnnMemory:
        meta_path = folder / "memory.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"KNN memory description missing: {meta_path}")
        meta = json.loads(meta_path.read_text())
        index = hnswlib.Index(space="l2", dim=int(meta["dim"]))
        index.load_index(str(folder / "memory.hnsw"), max_elements=int(meta["count"]))
        index.set_ef(int(meta["ef"]))
        projection_path = folder / "projection.npy"
        projection = np.load(projection_path) if projection_path.is_file() else None
        # Memories saved before the coarse scale existed describe every stage map, with the 3x3 context.
        coarse = cls.load(folder / meta["coarse"]) if meta.get("coarse") else None
        patch_modes = meta["mode"] == "patch" and (coarse is None or coarse.mode == "patch")
        if coarse is not None and (not patch_modes or meta.get("stage_count") is None):
            raise ValueError(f"{meta_path}: a coarse memory needs patch mode on both scales and a stage_count")
        typical = _positive_or_none(meta, "typical_distance", meta_path)
        ordinary = _positive_or_none(meta, "ordinary_distance", meta_path)
        if ordinary is not None and meta["mode"] != "patch":
            raise ValueError(f"{meta_path}: ordinary_distance applies to a patch memory, not mode {meta['mode']!r}")
        return cls(
            mode=meta["mode"],
            index=index,
            projection=projection,
            neighbours=int(meta["neighbours"]),
            stage_count=meta.get("stage_count"),
            context=bool(meta.get("context", True)),
            coarse=coarse,
            typical_distance=typical,
            ordinary_distance=ordinary,
        )


def ordinary_distance_of(fine_maps: Sequence[np.ndarray]) -> float | None:
    """The distance ORDINARY_QUANTILE of the held-out good patches stay within, from their fine distance maps
    searched in full; None when it is zero (nothing to search sparsely by)."""
    value = float(np.quantile(np.concatenate([np.ravel(m) for m in fine_maps]), ORDINARY_QUANTILE))
    return value if value > 0.0 else None


def _positive_or_none(meta: dict, key: str, meta_path: Path) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{meta_path}: {key} must be a positive number, got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=8)
def _checkerboard(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(the patches searched first: one colour of a checkerboard, flat; how many grid neighbours each patch has)"""
    rows, columns = np.mgrid[0 : grid[0], 0 : grid[1]]
    first = ((rows + columns) % 2 == 0).reshape(-1)
    inside = np.pad(np.ones(grid, dtype=np.float32), 1)
    count = inside[:-2, 1:-1] + inside[2:, 1:-1] + inside[1:-1, :-2] + inside[1:-1, 2:]
    count = count.reshape(-1)
    first.flags.writeable = count.flags.writeable = False  # shared by every call for this grid
    return first, count


def _around_second_half(
    distances: np.ndarray, first: np.ndarray, neighbour_count: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per patch, the largest and the mean distance of its up to four grid neighbours among the first half (every
    neighbour of a second-half patch is one); flat, meaningful for the second half only."""
    known = np.where(first, distances, 0.0).reshape(grid)
    padded = np.pad(known, 1)
    around = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    return around.max(axis=0).reshape(-1), around.sum(axis=0).reshape(-1) / np.maximum(neighbour_count, 1.0)


def build_index(vectors: np.ndarray, ef: int = 32, connections: int = 16, seed: int = 0) -> hnswlib.Index:
    """An HNSW index (L2) over the given vectors, stored zero-padded to `search_width`."""
    count, dim = vectors.shape
    width = search_width(dim)
    index = hnswlib.Index(space="l2", dim=width)
    index.init_index(max_elements=count, ef_construction=max(100, ef), M=connections, random_seed=seed)
    index.add_items(np.ascontiguousarray(pad_to_width(vectors, width), dtype=np.float32), np.arange(count))
    index.set_ef(ef)
    return index
