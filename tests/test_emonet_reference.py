"""Our PyTorch EmoNet against the upstream implementation's golden outputs, and the random-weights model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoengine.compare import GOLDEN_TORCH_TOLERANCE
from emoengine.export.checkpoint import load_emonet
from emoengine.export.emonet import EmoNet, EmoNetGraph, output_names, random_emonet, synthetic_crops

GOLDEN_KEYS = ("expression", "valence", "arousal", "heatmap", "conv1_mean", "emo_conv1_mean",
               "conv1_first8", "emo_conv1_first8")


def graph_outputs(graph: EmoNetGraph, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run the full-taps graph and name its outputs the way the golden files do."""
    with torch.no_grad():
        out = {n: t.numpy() for n, t in zip(graph.output_names, graph(torch.from_numpy(images)), strict=True)}
    out["conv1_first8"], out["emo_conv1_first8"] = out["conv1"][:, :8], out["emo_conv1"][:, :8]
    return out


@pytest.mark.parametrize("num_classes", [8, 5])
def test_reference_reproduces_golden_outputs(num_classes, request, golden_outputs):
    loaded = load_emonet(request.getfixturevalue(f"golden_pth_{num_classes}"))
    assert loaded.num_classes == num_classes and not loaded.model.training
    golden = golden_outputs(num_classes)
    got = graph_outputs(EmoNetGraph(loaded.model, full_taps=True), golden["images_rgb"])
    for key in GOLDEN_KEYS:
        assert got[key].shape == golden[key].shape, key
        diff = np.abs(got[key] - golden[key]).max()
        assert diff <= GOLDEN_TORCH_TOLERANCE * np.abs(golden[key]).max(), f"{key}: max |diff| {diff:.3g}"


def test_output_names_order():
    assert output_names(False) == ("expression", "valence", "arousal", "heatmap", "conv1_mean", "emo_conv1_mean")
    assert output_names(True) == output_names(False) + ("conv1", "emo_conv1")
    assert EmoNetGraph(EmoNet(5), full_taps=True).output_names == output_names(True)


@pytest.fixture(scope="module")
def random8() -> EmoNet:
    return random_emonet(8, seed=0)


def test_emonet_forward_shapes(random8):
    x = torch.from_numpy(synthetic_crops(2)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = random8(x)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"expression": (2, 8), "valence": (2,), "arousal": (2,), "heatmap": (2, 68, 64, 64)}


def test_the_graphs_tap_outputs_come_from_the_tap_table(random8):
    """The default taps' means and full tensors are the table's entries, as hooks record them."""
    from emoengine.contract import DEFAULT_TAP_SPECS

    graph = EmoNetGraph(random8, full_taps=True)
    with torch.no_grad():
        outs = dict(zip(graph.output_names, graph(torch.from_numpy(synthetic_crops(2))), strict=True))
    for spec in DEFAULT_TAP_SPECS:
        assert spec.mean_output and spec.full_output
        assert tuple(outs[spec.full_output].shape) == (2, *spec.shape)
        torch.testing.assert_close(outs[spec.mean_output], outs[spec.full_output].mean(dim=1))
    assert tuple(outs["conv1"].shape) == (2, 64, 128, 128) and tuple(outs["emo_conv1"].shape) == (2, 128, 64, 64)


def test_random_emonet_is_seeded_and_sane(random8):
    """Same seed, same weights; calibrated BatchNorm keeps activations of order one (not exploding, not dead)."""
    again = random_emonet(8, seed=0)
    for (name, a), b in zip(random8.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not random8.training and not any(p.requires_grad for p in random8.parameters())
    with torch.no_grad():
        out = EmoNetGraph(random8)(torch.from_numpy(synthetic_crops(2, seed=7)))
    for name, value in zip(output_names(False), out, strict=True):
        assert torch.isfinite(value).all(), name
        assert 1e-3 < value.abs().max() < 1e3, name
