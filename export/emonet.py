"""Our own EmoNet, written from /work/shared/EMONET.md so that upstream checkpoints load by key name.

Parameter and buffer names match the upstream state dict exactly (minus the `module.` prefix), which is
what lets `export.checkpoint` load `emonet_8.pth` / `emonet_5.pth` strictly. Every norm is a plain
`BatchNorm2d` (upstream reaches the same by patching torch.nn at import; we never touch torch.nn globally).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emoengine.contract import CROP_SIZE as INPUT_SIZE
from emoengine.contract import DEFAULT_TAP_SPECS, NUM_LANDMARKS, output_names
from emoengine.export.taps import TapRecorder, check_taps, module_paths


class ConvBlock(nn.Module):
    """Pre-activation block: three 3x3 convs whose outputs (out/2, out/4, out/4) are concatenated + residual."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        half, quarter = out_ch // 2, out_ch // 4
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, half, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, quarter, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = nn.Conv2d(quarter, quarter, 3, 1, 1, bias=False)
        self.downsample = None
        if in_ch != out_ch:
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(), nn.Conv2d(in_ch, out_ch, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.conv1(F.relu(self.bn1(x)))
        o2 = self.conv2(F.relu(self.bn2(o1)))
        o3 = self.conv3(F.relu(self.bn3(o2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat((o1, o2, o3), 1) + residual


class HourGlass(nn.Module):
    """Recursive hourglass; blocks are registered as `b1_L, b2_L, b3_L` (L = depth..1) and `b2_plus_1`."""

    def __init__(self, depth: int = 4, channels: int = 256) -> None:
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            for branch in ("b1", "b2", "b3"):
                self.add_module(f"{branch}_{level}", ConvBlock(channels, channels))
        self.b2_plus_1 = ConvBlock(channels, channels)   # registered like add_module, after the b*_L blocks

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up = getattr(self, f"b1_{level}")(x)
        low = getattr(self, f"b2_{level}")(F.max_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self.b2_plus_1(low)
        low = getattr(self, f"b3_{level}")(low)
        return up + F.interpolate(low, scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class EmoNet(nn.Module):
    """EmoNet: FAN-style stem + 2 hourglasses (landmark heatmaps) + attention-weighted emotion head.

    forward(x: float N x 3 x 256 x 256 in [0, 1], RGB) returns a dict: `expression` (N, C) logits,
    `valence` (N,), `arousal` (N,), `heatmap` (N, 68, 64, 64). The default taps' outputs are EmoNetGraph's,
    from the tap table (contract.DEFAULT_TAP_SPECS), recorded with forward hooks like any other tap.

    Every module upstream has is a module here under upstream's name, parameterless ones included
    (`emo_net_2.1` max-pool, `avg_pool_2`, the in-place ReLU `emo_fc_2.2`), and each is called as a module,
    so a forward hook on any of them sees what it sees upstream (see export.taps). What upstream computes with
    functional ops (the stem's max-pool, the hourglass pools and upsampling, the ReLUs of blocks) stays
    functional here: those have no name in upstream's tree.
    """

    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        if num_classes not in (5, 8):
            raise ValueError(f"EmoNet has 5 or 8 classes, not {num_classes}")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        for i in range(2):
            self.add_module(f"m{i}", HourGlass(4, 256))
            self.add_module(f"top_m_{i}", ConvBlock(256, 256))
            self.add_module(f"conv_last{i}", nn.Conv2d(256, 256, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(256))
            self.add_module(f"l{i}", nn.Conv2d(256, NUM_LANDMARKS, 1))
        self.bl0 = nn.Conv2d(256, 256, 1)
        self.al0 = nn.Conv2d(NUM_LANDMARKS, 256, 1)
        self.conv1x1_input_emo_2 = nn.Conv2d(768, 256, 1)
        self.emo_net_2 = nn.Sequential(*[m for _ in range(4) for m in (ConvBlock(256, 256), nn.MaxPool2d(2, 2))])
        self.avg_pool_2 = nn.AvgPool2d(4)
        self.emo_fc_2 = nn.Sequential(
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Linear(128, num_classes + 2)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        conv1 = self.conv1(x)
        x = F.relu(self.bn1(conv1))
        x = F.max_pool2d(self.conv2(x), 2, stride=2)
        stem = self.conv4(self.conv3(x))

        previous, features, heat = stem, [], None
        for i in range(2):
            hg = getattr(self, f"m{i}")(previous)
            ll = getattr(self, f"top_m_{i}")(hg)
            ll = F.relu(getattr(self, f"bn_end{i}")(getattr(self, f"conv_last{i}")(ll)))
            heat = getattr(self, f"l{i}")(ll)
            if i == 0:
                ll = self.bl0(ll)
                previous = previous + ll + self.al0(heat)
            features.append(ll)

        assert heat is not None   # the loop above ran
        mask = heat.sum(dim=1, keepdim=True)
        emo = torch.cat((stem, torch.cat(features, 1) * mask), 1)
        emo = self.conv1x1_input_emo_2(emo)
        emo = self.emo_net_2(emo)
        head = self.emo_fc_2(self.avg_pool_2(emo).flatten(1))
        c = self.num_classes
        return {
            "expression": head[:, 0:c],
            "valence": head[:, c],
            "arousal": head[:, c + 1],
            "heatmap": heat,
        }


class EmoNetGraph(nn.Module):
    """What we export and what the torch backend runs: uint8 NHWC RGB crops in, the contract's outputs out,
    then one output per tap in `taps` (module paths of `net`), named by its path and holding the full tensor.

    Scaling and the layout change live in the graph so every backend takes the same raw crops. A tap that is
    already a contract output (`conv1` with full_taps) is not repeated. Unknown tap names raise UserInputError.
    """

    def __init__(self, net: EmoNet, full_taps: bool = False, taps=()) -> None:
        super().__init__()
        self.net = net
        self.full_taps = full_taps
        self.taps = check_taps(taps, module_paths(net))
        self.output_names = output_names(full_taps, self.taps)
        self.extra_taps = self.output_names[len(output_names(full_taps)):]
        self.recorder = TapRecorder(net, self.extra_taps) if self.extra_taps else None
        # the table's taps, cloned in the hook as any tap is (a later in-place op must not change them)
        self.default_taps = TapRecorder(net, [spec.name for spec in DEFAULT_TAP_SPECS])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the weights' dtype: float32 for export, float16 when a torch backend runs the net in half precision
        x = image.to(self.net.conv1.weight.dtype).div(255.0).permute(0, 3, 1, 2)
        if self.recorder is not None:
            self.recorder.start()
        self.default_taps.start()
        out = self.net(x)
        taps = dict(zip(self.default_taps.names, self.default_taps.take(), strict=True))
        # in contract.output_names' order: the table's channel means, then (full_taps) its full tensors
        result = (out["expression"], out["valence"], out["arousal"], out["heatmap"],
                  *(taps[spec.name].mean(dim=1) for spec in DEFAULT_TAP_SPECS if spec.mean_output))
        if self.full_taps:
            result = result + tuple(taps[spec.name] for spec in DEFAULT_TAP_SPECS if spec.full_output)
        if self.recorder is not None:
            result = result + self.recorder.take()
        return result


def synthetic_crops(n: int = 2, seed: int = 0) -> np.ndarray:
    """Deterministic face-like 256x256 RGB uint8 crops (skin ellipse, eyes, mouth, noise) for checks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE].astype(np.float32) / INPUT_SIZE
    crops = np.empty((n, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    for k in range(n):
        bg = rng.uniform(30, 200, 3)
        img = bg + 40 * (yy[..., None] - 0.5) + rng.normal(0, 6, (INPUT_SIZE, INPUT_SIZE, 3))
        cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.52 + rng.uniform(-0.04, 0.04)
        face = ((xx - cx) / 0.33) ** 2 + ((yy - cy) / 0.42) ** 2 < 1
        img[face] = np.array([205, 160, 135]) * rng.uniform(0.6, 1.1) + rng.normal(0, 4, (face.sum(), 3))
        for ex in (cx - 0.13, cx + 0.13):  # eyes
            img[((xx - ex) / 0.06) ** 2 + ((yy - cy + 0.1) / 0.025) ** 2 < 1] = (40, 30, 30)
        mouth_h = rng.uniform(0.015, 0.05)  # closed to open mouth
        img[((xx - cx) / 0.12) ** 2 + ((yy - cy - 0.2) / mouth_h) ** 2 < 1] = (150, 60, 60)
        crops[k] = np.clip(img, 0, 255).astype(np.uint8)
    return crops


def _he_init(net: EmoNet, gen: torch.Generator, bias_std: float) -> None:
    """He-normal convolutions and linears (small random biases), BatchNorm affine 1 + 0.1 N(0,1) / 0.1 N(0,1),
    running statistics reset for a one-pass calibration (cumulative average)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * bias_std)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass gives the batch's exact statistics


def _calibrate(net: EmoNet, crops: np.ndarray) -> EmoNet:
    """Every BatchNorm's running statistics from one training-mode pass over `crops`; then eval, frozen."""
    net.train()
    net(torch.from_numpy(crops).float().div(255).permute(0, 3, 1, 2))
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    net.eval()
    net.requires_grad_(False)
    return net


@torch.no_grad()
def random_emonet(num_classes: int = 8, seed: int = 0) -> EmoNet:
    """Seeded random EmoNet whose BatchNorm statistics are calibrated on synthetic crops.

    Calibration keeps activations of order one (as in a trained net) so the random model exercises the same
    numeric ranges as a real one in exports and benchmarks. Its predictions mean nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    net = EmoNet(num_classes)
    _he_init(net, gen, bias_std=0.01)
    return _calibrate(net, synthetic_crops(4, seed))


# default weights without the golden data. 8: seed 15, picked from seeds 0-29 (weights rounded to float16) for the
# most headroom: 0.34-0.44 of the tightest tolerance over torch CPU half and bfloat16 at 1-3 threads and an
# fp32-accumulate emulation (AMD EPYC Zen 4, 2026-12-07); seed 42 read 0.41-0.66 there (tests/test_device_check)
CALIBRATED_SEED = {8: 15, 5: 42}
CALIBRATION_CROPS = (16, 100)   # (crops, seed): not the parity crops (PARITY_CROPS) nor the bench's timing ones (7)
PARITY_CROPS = (4, 1)           # (crops, seed): what the GPU is compared on without the golden crops


def parity_crops() -> np.ndarray:
    """The crops GPU parity is judged on where the golden crops did not travel."""
    return synthetic_crops(*PARITY_CROPS)


@torch.no_grad()
def calibrated_emonet(num_classes: int = 8, seed: int | None = None) -> EmoNet:
    """EmoNet made as the golden weights were (../shared/golden/README.md): He init (biases ~0.05 as there),
    then every BatchNorm's running statistics calibrated in one pass on face-like crops, then every value rounded
    to float16 as the golden file stores it (so, as for the golden data, the fp32 reference and a half-precision
    run start from the same weights); made from a seed on the machine that needs it, nothing carried. The default weights of benchmarks/device_check and of the GPU tests
    where the golden data did not travel: tests/test_device_check.py holds them, run in half and bfloat16 on the
    CPU, to half the tolerance table on the parity crops, so a correct fp16/bf16 GPU path passes with headroom."""
    gen = torch.Generator().manual_seed(CALIBRATED_SEED[num_classes] if seed is None else seed)
    net = EmoNet(num_classes)
    _he_init(net, gen, bias_std=0.05)
    n, crop_seed = CALIBRATION_CROPS
    net = _calibrate(net, synthetic_crops(n, crop_seed))
    for value in net.state_dict().values():
        if value.is_floating_point():
            value.copy_(value.half().float())
    return net
