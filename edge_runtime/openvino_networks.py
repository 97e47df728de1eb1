"""The inspection networks on OpenVINO: compiled once, then run per frame."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov

NETWORK_NAMES = ("knn_backbone", "map_backbone", "encoder", "denoiser", "decoder")


@dataclass(frozen=True)
class RuntimeOptions:
    """How OpenVINO runs the networks on this device."""

    device: str = "CPU"
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    threads: int | None = None
    # f32 keeps results identical across CPUs; CPUs with bf16 units otherwise silently compute in bf16.
    inference_precision: Literal["f32", "bf16"] = "f32"
    cache_dir: Path | None = None

    def search_threads(self) -> int:
        """Threads for one frame's KNN search: every core when frames go one at a time (latency), one when
        several frames are in flight (throughput), which keeps the cores busy by itself."""
        if self.performance_hint == "THROUGHPUT":
            return 1
        return self.threads or os.cpu_count() or 1

    def compile_config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "PERFORMANCE_HINT": self.performance_hint,
            "INFERENCE_PRECISION_HINT": self.inference_precision,
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config


def make_core(options: RuntimeOptions) -> ov.Core:
    core = ov.Core()
    if options.cache_dir is not None:
        options.cache_dir.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(options.cache_dir)})
    return core


class CompiledNetworks:
    """The five networks, each compiled the first time a frame needs it and kept from then on. A bundle whose
    fusion weighs no feature map never compiles the map backbone and the decoder: about 40 MB less resident memory
    for a 256 px model (docs/BENCHMARKS.md). Each `OpenVinoNetworks` made from it has its own infer requests, so
    several frames can be in flight at once (OpenVINO releases the GIL while it infers)."""

    def __init__(self, model_files: dict[str, Path], options: RuntimeOptions | None = None) -> None:
        missing = [name for name in NETWORK_NAMES if name not in model_files]
        if missing:
            raise ValueError(f"model files missing for networks: {', '.join(missing)}")
        self.model_files = model_files
        self.options = options or RuntimeOptions()
        self._core = make_core(self.options)
        self._models: dict[str, ov.CompiledModel] = {}
        self._lock = threading.Lock()  # worker threads may ask for the same network at once

    def model(self, name: str) -> ov.CompiledModel:
        """The network compiled for this device, compiled now if no frame has needed it yet."""
        with self._lock:
            if name not in self._models:
                self._models[name] = self._core.compile_model(
                    str(self.model_files[name]), self.options.device, self.options.compile_config()
                )
            return self._models[name]

    def compiled_names(self) -> list[str]:
        """The networks compiled so far."""
        with self._lock:
            return sorted(self._models)

    def optimal_requests(self) -> int:
        """How many requests in flight OpenVINO recommends for this device and hint (asked of the KNN backbone,
        which every frame runs)."""
        return int(self.model("knn_backbone").get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def worker(self) -> OpenVinoNetworks:
        return OpenVinoNetworks(self)


class OpenVinoNetworks:
    """Implements `InspectionNetworks` with one infer request per network (use one per thread), each made the
    first time its network runs."""

    def __init__(self, compiled: CompiledNetworks) -> None:
        self.compiled = compiled
        self.requests: dict[str, ov.InferRequest] = {}

    def _request(self, name: str) -> ov.InferRequest:
        if name not in self.requests:
            self.requests[name] = self.compiled.model(name).create_infer_request()
        return self.requests[name]

    @classmethod
    def from_files(cls, model_files: dict[str, Path], options: RuntimeOptions | None = None) -> OpenVinoNetworks:
        return cls(CompiledNetworks(model_files, options))

    def _run(self, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
        request = self._request(name)
        # The request reads the caller's arrays in place instead of copying them in: nothing changes them while it
        # runs (infer returns when it is done), and a 256 px frame is copied once less.
        request.infer({i: value for i, value in enumerate(inputs)}, share_inputs=True)
        # Copies: the request reuses its output buffers on the next call.
        return [request.get_output_tensor(i).data[0].copy() for i in range(len(request.model_outputs))]

    @staticmethod
    def _batch(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[None], dtype=np.float32)

    def knn_features(self, image: np.ndarray) -> list[np.ndarray]:
        return self._run("knn_backbone", self._batch(image))

    def map_features(self, image: np.ndarray) -> list[np.ndarray]:
        return self._run("map_backbone", self._batch(image))

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self._run("encoder", self._batch(image))[0]

    def predict_noise(self, latent: np.ndarray, timestep: int) -> np.ndarray:
        return self._run("denoiser", self._batch(latent), np.array([timestep], dtype=np.int64))[0]

    def decode(self, latent: np.ndarray) -> np.ndarray:
        return self._run("decoder", self._batch(latent))[0]
