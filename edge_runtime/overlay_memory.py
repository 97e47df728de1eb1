"""A device-local memory of good patches learned from operator feedback, searched beside the bundle's memory.

The signed bundle's memory is never changed: vectors of parts an operator marked good go into this separate
HNSW index (same space and width as the bundle's), which lives in the state directory. Each feedback's vectors
keep their labels, so one feedback can be undone (hnswlib `mark_deleted`). The overlay belongs to one model:
its vectors come from that model's backbone, so it is only reloaded for the very same model.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hnswlib
import numpy as np

from edge_runtime.durable_files import write_atomically
from edge_runtime.manifest import Manifest

META_FILE = "overlay.json"
_INDEX_PREFIX = "overlay-"
_INDEX_SUFFIX = ".hnsw"
_GROW_STEP = 1024  # the index grows in steps, not per feedback (resize_index copies the graph)
_EF = 64
_CONNECTIONS = 16


class OverlayError(ValueError):
    """An overlay that cannot take or give back vectors; the message says why."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model an overlay's vectors belong to: its version and a digest of its signed file hashes."""

    model_version: str
    model_id: str

    @classmethod
    def of(cls, manifest: Manifest) -> ModelIdentity:
        files = json.dumps(sorted(manifest.files.items())).encode()
        return cls(manifest.model_version, hashlib.sha256(files).hexdigest()[:16])


@dataclass
class OverlayEntry:
    """The vectors one feedback added (hnswlib labels), and whether it was undone."""

    feedback_id: str
    part_id: str
    labels: list[int]
    deleted: bool = False


@dataclass(frozen=True)
class OverlaySummary:
    vectors: int  # searchable (not undone) vectors
    capacity: int  # config cap on searchable vectors
    feedbacks: int  # feedbacks whose vectors are searchable
    model_version: str
    model_id: str


@dataclass
class _Meta:
    model: ModelIdentity
    dim: int
    next_label: int = 0
    index_file: str | None = None
    entries: list[OverlayEntry] = field(default_factory=list)


class OverlayMemory:
    """Thread-safe: the frame loop searches it while commands add and undo vectors."""

    def __init__(self, model: ModelIdentity, dim: int, capacity: int) -> None:
        self.capacity = capacity
        self._meta = _Meta(model=model, dim=dim)
        self._index = self._new_index(dim, _GROW_STEP)
        self._lock = threading.Lock()

    @staticmethod
    def _new_index(dim: int, max_elements: int) -> hnswlib.Index:
        index = hnswlib.Index(space="l2", dim=dim)
        index.init_index(max_elements=max_elements, ef_construction=100, M=_CONNECTIONS, random_seed=0)
        index.set_ef(_EF)
        return index

    @property
    def model(self) -> ModelIdentity:
        return self._meta.model

    @property
    def dim(self) -> int:
        return self._meta.dim

    def entry(self, feedback_id: str) -> OverlayEntry | None:
        with self._lock:
            return next((e for e in self._meta.entries if e.feedback_id == feedback_id), None)

    def active_feedback_of(self, part_id: str) -> str | None:
        """The feedback whose vectors of this part are still searched, if any."""
        with self._lock:
            return next((e.feedback_id for e in self._meta.entries if e.part_id == part_id and not e.deleted), None)

    def live_count(self) -> int:
        with self._lock:
            return self._live_count()

    def _live_count(self) -> int:
        return sum(len(e.labels) for e in self._meta.entries if not e.deleted)

    def summary(self) -> OverlaySummary:
        with self._lock:
            live = [e for e in self._meta.entries if not e.deleted]
            model = self._meta.model
            vectors = sum(len(e.labels) for e in live)
            return OverlaySummary(vectors, self.capacity, len(live), model.model_version, model.model_id)

    def room(self) -> int:
        """Vectors that may still be added before the overlay's cap."""
        return max(0, self.capacity - self.live_count())

    def add(self, feedback_id: str, part_id: str, vectors: np.ndarray) -> OverlayEntry:
        """Add one feedback's vectors (N x dim); refused beyond the cap or for a feedback id already used."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise OverlayError(f"vectors must be N x {self.dim}, got shape {vectors.shape}")
        with self._lock:
            if any(e.feedback_id == feedback_id for e in self._meta.entries):
                raise OverlayError(f"feedback {feedback_id} already added vectors")
            if self._live_count() + len(vectors) > self.capacity:
                raise OverlayError(f"{len(vectors)} more vectors would exceed the overlay's cap of {self.capacity}")
            start = self._meta.next_label
            labels = np.arange(start, start + len(vectors))
            self._grow_to(start + len(vectors))
            self._index.add_items(vectors, labels, num_threads=1)
            self._meta.next_label = start + len(vectors)
            entry = OverlayEntry(feedback_id, part_id, [int(label) for label in labels])
            self._meta.entries.append(entry)
            return entry

    def _grow_to(self, count: int) -> None:
        wanted = self._index.get_max_elements()
        while wanted < count:
            wanted += _GROW_STEP
        if wanted != self._index.get_max_elements():
            self._index.resize_index(wanted)

    def remove(self, feedback_id: str) -> OverlayEntry:
        """Undo one feedback: its vectors are no longer found (they stay in the file, marked deleted)."""
        with self._lock:
            entry = next((e for e in self._meta.entries if e.feedback_id == feedback_id), None)
            if entry is None:
                raise OverlayError(f"feedback {feedback_id} added no vectors to the overlay")
            if entry.deleted:
                raise OverlayError(f"feedback {feedback_id} was already undone")
            for label in entry.labels:
                self._index.mark_deleted(label)
            entry.deleted = True
            return entry

    def nearest_squared(self, vectors: np.ndarray, neighbours: int) -> np.ndarray | None:
        """Squared L2 distances (N x k', k' <= neighbours) to the nearest overlay vectors; None when empty."""
        with self._lock:
            live = self._live_count()
            if live == 0:
                return None
            # hnswlib cannot return more neighbours than there are searchable items.
            _, squared = self._index.knn_query(vectors, k=min(neighbours, live), num_threads=1)
            return squared

    # --- on disk ---------------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write the index under a new name, then replace the metadata that names it (the commit point), so
        a power cut leaves either the old or the new overlay, never a mix."""
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            index_name = f"{_INDEX_PREFIX}{secrets.token_hex(6)}{_INDEX_SUFFIX}"
            temporary_index = folder / f"{index_name}.tmp"
            self._index.save_index(str(temporary_index))
            _fsync(temporary_index)
            os.replace(temporary_index, folder / index_name)
            self._meta.index_file = index_name
            write_atomically(folder / META_FILE, json.dumps(asdict(self._meta), indent=1).encode("utf-8"))
        for stale in folder.glob(f"{_INDEX_PREFIX}*"):
            if stale.name != index_name:
                stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path, capacity: int) -> OverlayMemory | None:
        """The overlay saved in `folder`, or None when there is none; OverlayError when it is unreadable."""
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            return None
        try:
            raw = json.loads(meta_path.read_text())
            meta = _Meta(
                model=ModelIdentity(**raw["model"]),
                dim=int(raw["dim"]),
                next_label=int(raw["next_label"]),
                index_file=raw["index_file"],
                entries=[OverlayEntry(**entry) for entry in raw["entries"]],
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise OverlayError(f"{meta_path} cannot be read: {error}") from error
        overlay = cls(meta.model, meta.dim, capacity)
        if meta.index_file is not None:
            index_path = folder / meta.index_file
            if not index_path.is_file():
                raise OverlayError(f"{meta_path} names {meta.index_file}, which is missing")
            size = max(meta.next_label, 1)
            overlay._index = hnswlib.Index(space="l2", dim=meta.dim)
            overlay._index.load_index(str(index_path), max_elements=size, allow_replace_deleted=False)
            overlay._index.set_ef(_EF)
        overlay._meta = meta
        return overlay


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def clear_saved(folder: Path) -> None:
    """Remove a saved overlay (a model update makes its vectors meaningless)."""
    (folder / META_FILE).unlink(missing_ok=True)
    for path in folder.glob(f"{_INDEX_PREFIX}*"):
        path.unlink(missing_ok=True)
