"""The GPU runners' own logic, run on the CPU: no GPU and no TensorRT exist here, so torch.cuda's streams, events
and graphs are replaced by a stand-in (StandInCuda), EmoNet by a small stand-in graph where only the runner is
under test, and TensorRT by a fake module (FakeTensorRT) with TensorRT 10's name-based API that records every call.
Everything else is the real code: the torch-cuda runner's staging, padding (3 -> 4), splitting at max_batch and
fp16/bf16 -> float32 return, ONNX Runtime's CUDA options, build_engine and the TensorRT runner. One real check
of the model itself: EmoNetGraph compiles into one graph (`fullgraph=True`), the graph-break regression test."""

from __future__ import annotations

import contextlib
import ctypes
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emoengine.contract import INPUT_SHAPE
from emoengine.engine.backends import parse_backend
from emoengine.engine.backends.cuda import CAPTURE_ERROR_MODE


class StandInCuda:
    """A stand-in for torch.cuda on the CPU: streams whose work is already done when queued, timing events on the
    host clock, and CUDA graphs whose capture records its arguments (the captured call runs once; replay does
    nothing, so only a graph's first batch is checked)."""

    class Stream:
        cuda_stream = 0

        def synchronize(self) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            self.at = None

        def record(self, stream=None) -> None:
            self.at = time.perf_counter()

        def elapsed_time(self, end) -> float:
            return (end.at - self.at) * 1000

    class CUDAGraph:
        def replay(self) -> None:
            pass

    def __init__(self) -> None:
        self.captures: list[dict] = []
        self.current = self.Stream()

    def current_stream(self):
        return self.current

    def stream(self, stream):
        return contextlib.nullcontext()

    def graph(self, graph, **kwargs):
        self.captures.append(kwargs)
        return contextlib.nullcontext()

    def is_bf16_supported(self) -> bool:
        return True

    def get_device_name(self) -> str:
        return "stand-in"


class ProbeGraph(torch.nn.Module):
    """A stand-in for EmoNetGraph where only the runner is under test: the same uint8 NHWC input, two outputs,
    computed in the precision of its one weight; it records the batch of every call."""

    output_names = ("expression", "heatmap")

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0 / 255), requires_grad=False)
        self.calls: list[int] = []

    def forward(self, image):
        self.calls.append(len(image))
        x = image.to(self.scale.dtype) * self.scale
        return x.mean(dim=(1, 2)), x[:, ::64, ::64, 0]


def probe_expected(crops: np.ndarray) -> dict[str, np.ndarray]:
    x = crops.astype(np.float64) / 255
    return {"expression": x.mean(axis=(1, 2)), "heatmap": x[:, ::64, ::64, 0]}


def crops_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *INPUT_SHAPE), dtype=np.uint8)


def cpu_runner(spec: str, max_batch: int):
    from emoengine.engine.backends.torch import TorchCudaRunner

    cuda, graph = StandInCuda(), ProbeGraph()
    runner = TorchCudaRunner(graph, {}, parse_backend(spec), max_batch=max_batch, device="cpu", cuda=cuda)
    return runner, graph, cuda


def assert_outputs(got: dict, crops: np.ndarray, rel: float) -> None:
    for name, want in probe_expected(crops).items():
        assert got[name].dtype == np.float32 and got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name], want, rtol=rel, atol=rel, err_msg=name)


def test_torch_cuda_runner_pads_3_to_4_and_captures_its_graph_thread_local():
    runner, graph, cuda = cpu_runner("torch-cuda:fp16+cudagraph", max_batch=8)
    crops = crops_of(3)
    got = runner.infer(crops)
    assert_outputs(got, crops, 2e-3)                           # the padding row's outputs are dropped
    assert set(graph.calls) == {4}                             # warm-up and capture, all at the padded batch
    assert cuda.captures == [{"capture_error_mode": CAPTURE_ERROR_MODE}] and CAPTURE_ERROR_MODE == "thread_local"
    assert not runner.staging.device_in[3:4].any()             # the padding row is zeros


@pytest.mark.parametrize("precision, rel", [("fp16", 2e-3), ("bf16", 1e-2), ("fp32", 1e-6)])
def test_torch_cuda_runner_splits_at_max_batch_and_returns_float32(precision, rel):
    spec = "torch-cuda" if precision == "fp32" else f"torch-cuda:{precision}"
    runner, graph, _ = cpu_runner(spec, max_batch=4)
    runner.device_timing = True
    crops = crops_of(10, seed=1)
    got = runner.infer(crops)
    assert graph.calls == [4, 4, 2]                             # split at max_batch, no padding without graphs
    assert_outputs(got, crops, rel)
    want = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    host = runner.staging.host_out
    assert {t.dtype for t in host.values()} == {want}           # downloaded in their own precision...
    assert all(len(t) == 4 for t in host.values())              # ...into buffers preallocated for max_batch
    assert not runner.staging.pinned and runner.last_device_ms is not None and runner.last_device_ms >= 0


def test_ort_cuda_turns_tf32_off_for_fp32_only():
    from emoengine.engine.backends.ort_cuda import provider_options

    fp32 = provider_options(parse_backend("ort-cuda"), 0, 1234)
    assert fp32["use_tf32"] == "0" and fp32["user_compute_stream"] == "1234" and fp32["device_id"] == "0"
    assert "use_tf32" not in provider_options(parse_backend("ort-cuda:fp16"), 0, 1234)
    graphs = provider_options(parse_backend("ort-cuda:cudagraph+conv_search=HEURISTIC"), 0, 1234)
    assert graphs["enable_cuda_graph"] == "1" and "user_compute_stream" not in graphs
    assert graphs["cudnn_conv_algo_search"] == "HEURISTIC"


@pytest.mark.slow
def test_emonet_graph_compiles_into_one_graph_at_batch_1():
    """A graph break anywhere in EmoNetGraph (a hook, a Python branch on a tensor) fails `fullgraph=True`; the
    eager backend traces exactly what inductor would get, without compiling kernels (a minute on this CPU)."""
    from emoengine.export.emonet import EmoNet, EmoNetGraph, synthetic_crops

    torch.manual_seed(0)
    graph = EmoNetGraph(EmoNet(8)).eval()
    image = torch.from_numpy(synthetic_crops(1, seed=1))
    compiled = torch.compile(graph, backend="eager", fullgraph=True)
    with torch.inference_mode():
        got, want = compiled(image), graph(image)
    assert len(got) == len(graph.output_names)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- TensorRT 10's name-based API, with a fake module -------------------------------------------------------------
class FakeTensorRT:
    """A fake `tensorrt` (none can be installed here) with TensorRT 10's names: Builder/NetworkDefinition/OnnxParser/
    BuilderConfig/IOptimizationProfile on the build side; Runtime, ICudaEngine's tensor-name queries and
    IExecutionContext's set_input_shape / set_tensor_address / execute_async_v3 on the run side. Every call is
    recorded in `calls`; execute_async_v3 computes through the bound addresses (host memory here): expression =
    each crop's mean (fp16), valence = its first pixel (fp32)."""

    __version__ = "10.9.0"
    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=None: None})
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    BuilderFlag = SimpleNamespace(TF32="TF32")
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    DataType = SimpleNamespace(UINT8=SimpleNamespace(name="UINT8"), HALF=SimpleNamespace(name="HALF"),
                               FLOAT=SimpleNamespace(name="FLOAT"))
    TENSORS = {"image": ("INPUT", "UINT8", INPUT_SHAPE), "expression": ("OUTPUT", "HALF", (8,)),
               "valence": ("OUTPUT", "FLOAT", ())}
    MAX_BATCH = 4

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        fake = self

        def recorded(name, result=True):
            def call(*args, **kwargs):
                fake.calls.append((name, args, kwargs))
                return result(*args, **kwargs) if callable(result) else result
            return call

        network = SimpleNamespace(num_inputs=1, get_input=lambda i: SimpleNamespace(name="image",
                                                                                   shape=(-1, *INPUT_SHAPE)))
        cache = SimpleNamespace(serialize=lambda: b"timings")
        config = SimpleNamespace(set_memory_pool_limit=recorded("set_memory_pool_limit"),
                                 clear_flag=recorded("clear_flag"), create_timing_cache=recorded(
                                     "create_timing_cache", cache), set_timing_cache=recorded("set_timing_cache"),
                                 add_optimization_profile=recorded("add_optimization_profile"),
                                 get_timing_cache=lambda: cache)
        profile = SimpleNamespace(set_shape=recorded("set_shape"))
        self.Builder = lambda logger: SimpleNamespace(
            create_network=recorded("create_network", network), create_builder_config=lambda: config,
            create_optimization_profile=lambda: profile,
            build_serialized_network=recorded("build_serialized_network", b"serialized plan"))
        self.OnnxParser = lambda net, logger: SimpleNamespace(parse_from_file=recorded("parse_from_file"),
                                                              num_errors=0)
        self.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=recorded(
            "deserialize_cuda_engine", lambda data: self.engine()))

    def engine(self):
        names = list(self.TENSORS)
        max_shape = {n: (self.MAX_BATCH, *tail) for n, (_, _, tail) in self.TENSORS.items()}
        return SimpleNamespace(
            num_io_tensors=len(names), get_tensor_name=lambda i: names[i],
            get_tensor_mode=lambda n: self.TENSORS[n][0],
            get_tensor_dtype=lambda n: getattr(self.DataType, self.TENSORS[n][1]),
            get_tensor_profile_shape=lambda n, profile: [(1, *INPUT_SHAPE), (1, *INPUT_SHAPE), max_shape[n]],
            get_tensor_shape=lambda n: (-1, *self.TENSORS[n][2]),
            create_execution_context=lambda: FakeContext(self))


class FakeContext:
    """IExecutionContext of the fake: shapes and addresses by tensor name; executes on host memory."""

    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt, self.batch, self.addresses = trt, None, {}

    def set_input_shape(self, name, shape) -> bool:
        self.trt.calls.append(("set_input_shape", (name, tuple(shape)), {}))
        self.batch = shape[0]
        return name == "image" and 1 <= shape[0] <= self.trt.MAX_BATCH

    def get_tensor_shape(self, name):
        return (self.batch, *self.trt.TENSORS[name][2])

    def set_tensor_address(self, name, address) -> bool:
        self.trt.calls.append(("set_tensor_address", (name, address), {}))
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle) -> bool:
        self.trt.calls.append(("execute_async_v3", (), {"stream_handle": stream_handle}))
        n = self.batch
        image = host_array(self.addresses["image"], np.uint8, (n, *INPUT_SHAPE))
        host_array(self.addresses["expression"], np.float16, (n, 8))[...] = image.mean(axis=(1, 2, 3))[:, None]
        host_array(self.addresses["valence"], np.float32, (n,))[...] = image[:, 0, 0, 0]
        return True


def host_array(address: int, dtype, shape) -> np.ndarray:
    """A numpy view of host memory at an address (what a device pointer is on the CPU)."""
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_uint8 * count).from_address(address), dtype=dtype).reshape(shape)


@pytest.fixture
def fake_trt(monkeypatch):
    from emoengine.engine.backends import cuda
    from emoengine.engine.backends import tensorrt as trt_backend
    from emoengine.export import trt_engine

    fake = FakeTensorRT()
    for module in (cuda, trt_backend, trt_engine):
        monkeypatch.setattr(module, "require_tensorrt", lambda: (fake, torch))
    return fake


def test_build_engine_uses_tensorrt_10_names_strong_typing_one_profile_and_the_timing_cache(fake_trt, tmp_path):
    from emoengine.export.trt_engine import build_engine

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    cache = tmp_path / "timing.cache"
    engine = build_engine(onnx_path, tmp_path / "m.engine", max_batch=4, opt_batch=2, timing_cache=cache)
    assert engine.read_bytes() == b"serialized plan" and cache.read_bytes() == b"timings"
    calls = {name: (args, kwargs) for name, args, kwargs in fake_trt.calls}
    assert calls["create_network"][0] == (1 << 5,)                               # STRONGLY_TYPED
    assert calls["parse_from_file"][0] == (str(onnx_path),)
    assert calls["set_memory_pool_limit"][0] == ("WORKSPACE", 4 << 30)
    assert calls["clear_flag"][0] == ("TF32",)
    assert calls["create_timing_cache"][0] == (b"",) and calls["set_timing_cache"][0][1] is False
    assert calls["set_shape"][0] == ("image", (1, *INPUT_SHAPE), (2, *INPUT_SHAPE), (4, *INPUT_SHAPE))
    assert [c[0] for c in fake_trt.calls][-2:] == ["add_optimization_profile", "build_serialized_network"]


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["enqueue", "cuda-graph"])
def test_trt_runner_binds_by_tensor_name_and_splits_at_the_profile_max(fake_trt, tmp_path, cuda_graph):
    from emoengine.engine.backends.tensorrt import TrtRunner

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized plan")
    cuda = StandInCuda()
    runner = TrtRunner(engine, metadata={}, cuda_graph=cuda_graph, device="cpu", cuda=cuda)
    assert (runner.input_names, runner.output_names) == (["image"], ["expression", "valence"])
    assert runner.max_batch == 4 and runner.metadata["num_classes"] == "8"
    crops = crops_of(3, seed=2)
    fake_trt.calls.clear()
    got = runner.infer(crops)
    names = [c[0] for c in fake_trt.calls]
    assert names[:4] == ["set_input_shape", "set_tensor_address", "set_tensor_address", "set_tensor_address"]
    assert fake_trt.calls[0][1] == ("image", (3, *INPUT_SHAPE))
    bound = {c[1][0]: c[1][1] for c in fake_trt.calls if c[0] == "set_tensor_address"}
    assert bound == {"image": runner.staging.device_in.data_ptr(),
                     **{n: t.data_ptr() for n, t in runner.outputs.items()}}   # stable, max-batch buffers
    assert ("execute_async_v3", (), {"stream_handle": 0}) in fake_trt.calls
    assert got["expression"].dtype == np.float32 and got["valence"].dtype == np.float32
    np.testing.assert_allclose(got["expression"][:, 0], crops.mean(axis=(1, 2, 3)), rtol=1e-3)
    np.testing.assert_array_equal(got["valence"], crops[:, 0, 0, 0])
    if cuda_graph:
        assert cuda.captures == [{"stream": runner.stream, "capture_error_mode": "thread_local"}]
    else:
        more = crops_of(6, seed=3)   # 6 > the profile's 4: split into 4 + 2
        fake_trt.calls.clear()
        np.testing.assert_array_equal(runner.infer(more)["valence"], more[:, 0, 0, 0])
        assert [c[1][1][0] for c in fake_trt.calls if c[0] == "set_input_shape"] == [4, 2]
