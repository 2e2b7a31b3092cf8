"""The taps one run writes (`run --taps`), and each face's share of them out of an `EmoNetBatch`.

A tap (export.taps) is one EmoNet module's output per face. Its rank decides what a run makes of it: a *map*
(C, H, W) becomes a feature-map video and a mean PNG; a *vector* (F,), or channels over a 1x1 map such as
`avg_pool_2`'s (C, 1, 1), becomes CSV columns. The shape comes from the opened model itself (one black crop run
once), so every backend and every artifact answers alike.

The default taps (contract.DEFAULT_TAPS) reach the run as the export's `conv1_mean` / `emo_conv1_mean` outputs
(and `conv1` / `emo_conv1` with --full-taps); any other tap as its full tensor under its module path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from emoengine.contract import DEFAULT_TAPS, FULL_TAP_OUTPUTS, INPUT_SHAPE, tap_file_stem
from emoengine.errors import UserInputError
from emoengine.export.taps import is_vector_shape

log = logging.getLogger(__name__)

TAP_VIEWS = ("mean", "grid")
# the default taps' contract outputs: module path -> (channel-mean output, full output)
DEFAULT_OUTPUTS = {"conv1": ("conv1_mean", "conv1"), "emo_net_2.0.conv1": ("emo_conv1_mean", "emo_conv1")}


@dataclass(frozen=True)
class TapSpec:
    """One tap as a run writes it: module path, file stem, "map" or "vector", and its full shape per face."""

    name: str
    kind: str
    shape: tuple[int, ...]

    @property
    def stem(self) -> str:
        return tap_file_stem(self.name)

    @property
    def size(self) -> int:
        """Elements of a vector tap (its CSV columns)."""
        return int(np.prod(self.shape))

    @classmethod
    def of(cls, name: str, shape) -> TapSpec:
        return cls(name, "vector" if is_vector_shape(shape) else "map", tuple(int(d) for d in shape))


def default_tap_specs() -> tuple[TapSpec, ...]:
    """The default taps, as every EmoNet export has them (no model needed)."""
    full = dict(zip(DEFAULT_OUTPUTS, FULL_TAP_OUTPUTS.values(), strict=True))
    return tuple(TapSpec.of(name, full[name]) for name in DEFAULT_TAPS)


def run_tap_names(taps, tap_view: str = "mean", check: bool = True) -> tuple[str, ...]:
    """`run --taps`'s value checked: module paths, in order, without repeats. None or a bool (the older
    --taps/--no-taps flag): the default taps; a string: comma-separated names; a list: the names. An unknown name
    or view is a UserInputError (one line, exit 2) naming the closest modules. `check=False` leaves the names to
    `run_tap_specs`, which checks them against an opened artifact first: EmoNet's module tree needs PyTorch
    (~200 MB resident), which a run from --weights loads anyway and one from --model need not."""
    from emoengine.export.taps import parse_taps

    if tap_view not in TAP_VIEWS:
        raise UserInputError(f"tap_view must be {' or '.join(TAP_VIEWS)}, not {tap_view!r}", options=("tap_view",))
    if taps is None or isinstance(taps, bool):
        return DEFAULT_TAPS
    names = tuple(dict.fromkeys(parse_taps(taps) if isinstance(taps, str) else taps))
    if not names:
        raise UserInputError("taps needs one module name or more (`emoengine layers` lists them; no_taps for none)",
                             options=("taps", "no_taps"))
    if check and not set(names) <= set(DEFAULT_TAPS):
        check_known(names)
    return names


def check_known(names) -> None:
    """An unknown module name is a UserInputError naming the closest ones (needs PyTorch; without it, nothing)."""
    try:
        from emoengine.export.taps import check_taps, emonet_module_paths

        known = emonet_module_paths()
    except ImportError:
        return
    check_taps(names, known)


def model_taps(names, tap_view: str = "mean", full_taps: bool = False) -> tuple[str, ...]:
    """The taps to ask `open_emonet(taps=...)` for: every tap but the default ones, which come as the export's
    channel means, unless a grid (every channel) is wanted and --full-taps does not already give them."""
    need_full_defaults = tap_view == "grid" and not full_taps
    return tuple(n for n in names if n not in DEFAULT_OUTPUTS or need_full_defaults)


def full_tensor(batch, name: str) -> np.ndarray | None:
    """A tap's full (N, ...) tensor in `batch`, under its module path or (default taps) its contract name."""
    if name in batch.taps:
        return batch.taps[name]
    if name in DEFAULT_OUTPUTS:
        return getattr(batch, DEFAULT_OUTPUTS[name][1])
    return None


def required_tensor(batch, name: str) -> np.ndarray:
    """full_tensor, for a tap the model has (checked when the run's taps were chosen)."""
    tensor = full_tensor(batch, name)
    if tensor is None:
        raise KeyError(f"the batch has no tap {name!r}")
    return tensor


def _has(model, name: str, tap_view: str) -> bool:
    if name in model.taps:
        return True
    if name not in DEFAULT_OUTPUTS:
        return False
    return model.has_full_taps or (tap_view == "mean" and model.has_taps)


def run_tap_specs(model, names, tap_view: str = "mean", source: str = "the model") -> tuple[TapSpec, ...]:
    """The specs of `names` on this opened model, in order; a tap the model does not output is one UserInputError
    saying how to export a model that does. Shapes of taps other than the defaults are probed on one black crop."""
    missing = [n for n in names if not _has(model, n, tap_view)]
    if missing:
        check_known(missing)   # a misspelt name: say so, with the closest ones, rather than "re-export"
        wanted = ",".join(model_taps(names, tap_view))
        grid = " (tap_view grid shows every channel, so the default taps are needed in full too)" \
            if tap_view == "grid" and set(missing) <= set(DEFAULT_OUTPUTS) else ""
        raise UserInputError(f"{source} has no tap {', '.join(repr(n) for n in missing)}{grid}; re-export it with "
                             f"`emoengine export --weights <your .pth> --taps {wanted}`, or run from weights",
                             options=("tap_view", "weights"))
    probed = {}
    if any(n not in DEFAULT_OUTPUTS for n in names):
        batch = model.predict(np.zeros((1, *INPUT_SHAPE), np.uint8))
        probed = {n: required_tensor(batch, n).shape[1:] for n in names if n not in DEFAULT_OUTPUTS}
    defaults = {spec.name: spec for spec in default_tap_specs()}
    return tuple(defaults[n] if n in defaults else TapSpec.of(n, probed[n]) for n in names)


def face_taps(batch, k: int, specs) -> dict[str, np.ndarray]:
    """Face k's taps: module path -> its channel-mean map (2-D float32) for a map tap, its vector (1-D float32)
    for a vector tap. New arrays, so a face kept later does not keep the whole batch's tensors alive."""
    taps = {}
    for spec in specs:
        mean_name = DEFAULT_OUTPUTS.get(spec.name, (None,))[0]
        mean = getattr(batch, mean_name) if mean_name else None
        if spec.kind == "map" and mean is not None:
            taps[spec.name] = np.array(mean[k], np.float32)
            continue
        full = required_tensor(batch, spec.name)[k]
        if spec.kind == "vector":
            taps[spec.name] = np.array(full, np.float32).reshape(-1)
        else:
            taps[spec.name] = channel_mean(full)
    return taps


def channel_mean(full: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) float32, the mean over channels (a 2-D map is its own mean)."""
    full = np.asarray(full, np.float32)
    return full.mean(axis=0, dtype=np.float32) if full.ndim == 3 else np.array(full, np.float32)


def face_full_taps(batch, k: int, specs) -> dict[str, np.ndarray]:
    """Face k's taps untouched (--full-taps, --tap-view grid), by module path, where the batch has them."""
    out = {}
    for spec in specs:
        full = full_tensor(batch, spec.name)
        if full is not None:
            out[spec.name] = full[k]
    return out


def tap_specs_for_run(cfg, model) -> tuple[TapSpec, ...]:
    """The taps a run (engine.run.driver.RunConfig) writes with this model. An artifact without the default
    taps' outputs (a foreign export) runs without feature maps, as it always did, with a warning; any tap named
    with --taps that the model lacks is exit 2 (run_tap_specs)."""
    if not cfg.taps:
        return ()
    names = tuple(cfg.tap_names)
    if names == DEFAULT_TAPS and cfg.tap_view == "mean" and not (model.has_taps or model.has_full_taps):
        log.warning(f"warning: {cfg.weights or 'the model'} has no feature-map outputs; no tap files are written")
        return ()
    return run_tap_specs(model, names, cfg.tap_view, source=cfg.weights or "the model")
