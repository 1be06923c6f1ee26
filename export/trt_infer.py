"""``semgan infer``: label maps -> images with a TensorRT engine, replayed as CUDA graphs.

``TRTGenerator(engine)`` deserialises the engine (plugins loaded first), keeps static input/output
buffers per input shape and captures one CUDA graph per shape after a warm-up enqueue (TensorRT's
``execute_async_v3`` is capturable once shapes and addresses are set); later calls with that shape copy
the inputs into the static buffers and replay the graph. Needs TensorRT, torch with CUDA and a GPU;
otherwise ``TensorRTUnavailable``.
"""
from __future__ import annotations

import json
import os

import torch

from .trt_build import TensorRTUnavailable, import_tensorrt, load_plugins

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "BF16": torch.bfloat16}


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT inference needs a CUDA GPU and a CUDA build of torch "
                                  f"(torch {torch.__version__}, torch.cuda.is_available() is False)")


class TRTGenerator:
    """Callable: (labels [B,H,W] int, edge [B,1,H,W] float | None) -> image [B,3,H,W] float32 (CUDA)."""

    def __init__(self, engine_path: str, plugin: str | None = None, cuda_graphs: bool = True):
        require_cuda()
        trt = import_tensorrt()
        if not os.path.isfile(engine_path):
            raise ValueError(f"engine {engine_path!r} does not exist")
        self.plugin = load_plugins(trt, plugin)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise ValueError(f"could not deserialise {engine_path} (TensorRT version or plugin mismatch?)")
        self.context = self.engine.create_execution_context()
        self.trt = trt
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        sidecar = engine_path + ".json"
        self.info = json.load(open(sidecar)) if os.path.isfile(sidecar) else {}
        self.cuda_graphs = cuda_graphs
        self.stream = torch.cuda.Stream()
        self._graphs: dict[tuple, tuple] = {}

    @property
    def uses_edge(self) -> bool:
        return "edge" in self.inputs

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]

    def _bind(self, feeds: dict) -> dict:
        """Sets shapes and allocates static buffers for one input shape; returns {name: tensor}."""
        buffers = {}
        for name in self.inputs:
            buf = torch.empty(tuple(feeds[name].shape), dtype=self._dtype(name), device="cuda")
            self.context.set_input_shape(name, tuple(buf.shape))
            buffers[name] = buf
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
        for name, buf in buffers.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        return buffers

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def __call__(self, labels: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"labels": labels}
        if self.uses_edge:
            if edge is None:
                raise ValueError("this engine takes the instance-edge input: pass edge [B,1,H,W]")
            feeds["edge"] = edge
        key = tuple(tuple(feeds[n].shape) for n in self.inputs)
        entry = self._graphs.get(key)
        if entry is None:
            buffers = self._bind(feeds)
            for name in self.inputs:
                buffers[name].copy_(feeds[name])
            with torch.cuda.stream(self.stream):
                self._enqueue()                      # warm-up: resolves shapes, runs onShapeChange
            graph = None
            if self.cuda_graphs:
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self._enqueue()
            entry = (buffers, graph)
            self._graphs = {key: entry}              # one shape at a time: buffers of the last shape only
        buffers, graph = entry
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                buffers[name].copy_(feeds[name], non_blocking=True)
            if graph is not None:
                graph.replay()
            else:
                self._enqueue()
            out = buffers[self.outputs[0]].clone()
        torch.cuda.current_stream().wait_stream(self.stream)
        return out.float()
