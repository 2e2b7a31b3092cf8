"""MTCNN's P-, R- and O-Net in PyTorch, from the same `mtcnn` wheel weights as the ONNX graphs (mtcnn_graphs).

Why: a lent GPU machine has PyTorch with CUDA but no onnxruntime-gpu, so with a torch / torch-cuda backend the
detector's nets run here, on the backend's device. The layers are the ONNX graphs' one for one (see
mtcnn_graphs for the Keras layout): convs with HWIO kernels as OIHW, PReLU per channel, TensorFlow "same" pooling
(the extra padding at the end), the wheel's (N, W, H, C) flatten before the first dense layer, and P(face) as
sigmoid(l1 - l0). Inputs travel to the device as uint8 NHWC (4x fewer bytes than float32) and are normalised
there. `TorchNet.infer` keeps OrtRunner's contract (numpy feeds in, float32 numpy out), so MTCNNDetector runs
either without knowing which. The same code runs on device `cpu` (tests compare it with ONNX Runtime).
"""

from __future__ import annotations

import math

import numpy as np

from emoengine.engine.tracking.detectors.mtcnn import NET_NAMES
from emoengine.engine.tracking.detectors.mtcnn_graphs import load_weights


def _face_logit(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2-way softmax head as one logit: softmax(l)[1] == sigmoid(l1 - l0) (as mtcnn_graphs does)."""
    return w[..., 1:2] - w[..., 0:1], b[1:2] - b[0:1]


class _Layers:
    """The few layer kinds the three nets are made of, over tensors of the weights on one device."""

    def __init__(self, torch, device: str) -> None:
        import torch.nn.functional as F

        self.torch, self.F, self.device = torch, F, device

    def t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device)

    def normalise(self, image):
        """uint8 NHWC on the device -> float NCHW (x - 127.5) / 128."""
        return ((image.float() - 127.5) * (1 / 128)).permute(0, 3, 1, 2)

    def conv(self, x, kernel_hwio, bias):
        return self.F.conv2d(x, kernel_hwio, bias)

    def prelu(self, x, alpha):
        return self.F.prelu(x, alpha)

    def maxpool(self, x, size: int, stride: int, same: bool):
        """TensorFlow pooling: "same" pads to ceil(n / stride) outputs with the extra padding at the end."""
        if same:
            pads = []
            for n in (x.shape[3], x.shape[2]):          # F.pad takes the last dimension first
                total = max((math.ceil(n / stride) - 1) * stride + size - n, 0)
                pads += [total // 2, total - total // 2]
            x = self.F.pad(x, pads, value=-math.inf)
        return self.F.max_pool2d(x, size, stride)

    def dense(self, x, kernel, bias):
        return self.torch.addmm(bias, x, kernel)

    def keras_flatten(self, x):
        return x.permute(0, 3, 2, 1).flatten(1)


def _prepared(name: str, w: list[np.ndarray], layers: _Layers) -> list:
    """The weight list on the device: conv kernels OIHW, PReLU slopes (C,), the face head as one logit."""
    conv_at = {"pnet": (0, 3, 6, 9, 11), "rnet": (0, 3, 6), "onet": (0, 3, 6, 9)}[name]
    w = list(w)
    head = len(w) - 2                                        # the last dense/conv pair is the face head
    w[head], w[head + 1] = _face_logit(w[head], w[head + 1])
    out = []
    for i, a in enumerate(w):
        if i in conv_at:
            a = a.transpose(3, 2, 0, 1)                      # HWIO -> OIHW
        elif a.ndim == 3:                                    # conv PReLU (1, 1, C) -> (C,)
            a = a.reshape(-1)
        out.append(layers.t(a))
    return out


def _pnet(L: _Layers, w, image) -> dict:
    x = L.normalise(image)
    x = L.maxpool(L.prelu(L.conv(x, w[0], w[1]), w[2]), 2, 2, same=True)
    x = L.prelu(L.conv(x, w[3], w[4]), w[5])
    x = L.prelu(L.conv(x, w[6], w[7]), w[8])
    reg = L.conv(x, w[9], w[10]).permute(0, 2, 3, 1)
    prob = L.torch.sigmoid(L.conv(x, w[11], w[12]))[:, 0]
    return {"prob": prob, "reg": reg}


def _rnet(L: _Layers, w, image) -> dict:
    x = L.normalise(image)
    x = L.maxpool(L.prelu(L.conv(x, w[0], w[1]), w[2]), 3, 2, same=True)
    x = L.maxpool(L.prelu(L.conv(x, w[3], w[4]), w[5]), 3, 2, same=False)
    x = L.prelu(L.conv(x, w[6], w[7]), w[8])
    x = L.prelu(L.dense(L.keras_flatten(x), w[9], w[10]), w[11])
    return {"prob": L.torch.sigmoid(L.dense(x, w[14], w[15])).reshape(-1), "reg": L.dense(x, w[12], w[13])}


def _onet(L: _Layers, w, image) -> dict:
    x = L.normalise(image)
    x = L.maxpool(L.prelu(L.conv(x, w[0], w[1]), w[2]), 3, 2, same=True)
    x = L.maxpool(L.prelu(L.conv(x, w[3], w[4]), w[5]), 3, 2, same=False)
    x = L.maxpool(L.prelu(L.conv(x, w[6], w[7]), w[8]), 2, 2, same=True)
    x = L.prelu(L.conv(x, w[9], w[10]), w[11])
    x = L.prelu(L.dense(L.keras_flatten(x), w[12], w[13]), w[14])
    return {"prob": L.torch.sigmoid(L.dense(x, w[19], w[20])).reshape(-1), "reg": L.dense(x, w[15], w[16]),
            "landmarks": L.dense(x, w[17], w[18])}


_FORWARD = {"pnet": _pnet, "rnet": _rnet, "onet": _onet}


class TorchNet:
    """One MTCNN net on a torch device, behind OrtRunner's `infer({"image": uint8 NHWC}) -> {name: float32}`."""

    def __init__(self, name: str, weights: list[np.ndarray], device: str = "cpu") -> None:
        import torch

        self.name, self.device, self.torch = name, device, torch
        self._layers = _Layers(torch, device)
        self._weights = _prepared(name, weights, self._layers)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        image = np.ascontiguousarray(feeds["image"], np.uint8)
        with torch.inference_mode():
            x = torch.from_numpy(image).to(self.device, non_blocking=False)   # uint8 to the device
            out = _FORWARD[self.name](self._layers, self._weights, x)
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    def close(self) -> None:
        self._weights = []


def torch_nets(weights_dir: str | None, device: str) -> dict[str, TorchNet]:
    """P/R/O-Net on `device` ("cpu" or "cuda[:n]"). On CUDA, PyTorch must see the GPU (one line if not)."""
    if device.startswith("cuda"):
        from emoengine.engine.backends.cuda import require, torch_cuda_missing

        require("torch-cuda (mtcnn)", torch_cuda_missing)
    weights = load_weights(weights_dir)
    return {n: TorchNet(n, weights[n], device) for n in NET_NAMES}
