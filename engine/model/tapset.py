"""The taps one run writes (`run --taps`), and each face's share of them out of an `EmoNetBatch`.

A tap (export.taps) is one EmoNet module's output per face. Its rank decides what a run makes of it: a *map*
(C, H, W) becomes a feature-map video and a mean PNG; a *vector* (F,), or channels over a 1x1 map such as
`avg_pool_2`'s (C, 1, 1), becomes CSV columns. The shape comes from the opened model itself (one black crop run
once), so every backend and every artifact answers alike.

Every tap is a contract.TapSpec: the defaults (contract.DEFAULT_TAP_SPECS) say which export outputs carry their
channel means (`conv1_mean`) and full tensors (`conv1`, with --full-taps); any other tap is its full tensor under
its module path. Nothing here names a default tap: the table does.
"""

from __future__ import annotations

import logging

import numpy as np

from emoengine.contract import INPUT_SHAPE, TapSpec, default_tap_specs
from emoengine.errors import UserInputError

__all__ = ["TAP_VIEWS", "TapSpec", "default_tap_specs", "face_channels", "face_full_taps", "face_taps",
           "run_tap_names", "run_tap_specs", "tap_specs_for_run"]

log = logging.getLogger(__name__)

TAP_VIEWS = ("mean", "grid")


def default_spec(name: str) -> TapSpec | None:
    """The table's entry for a module path, None for a tap other than the defaults."""
    return next((spec for spec in default_tap_specs() if spec.name == name), None)


def default_tap_names() -> tuple[str, ...]:
    """run's default taps, by module path, from the table."""
    return tuple(spec.name for spec in default_tap_specs())


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
        return default_tap_names()
    names = tuple(dict.fromkeys(parse_taps(taps) if isinstance(taps, str) else taps))
    if not names:
        raise UserInputError("taps needs one module name or more (`emoengine layers` lists them; no_taps for none)",
                             options=("taps", "no_taps"))
    if check and not set(names) <= set(default_tap_names()):
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


def model_taps(names, tap_view: str = "mean", full_taps: bool = False, full: bool = False) -> tuple[str, ...]:
    """The taps to ask `open_emonet(taps=...)` for: every tap but the defaults that have a channel-mean output,
    unless their full tensors are wanted (a grid, `full`: activations.npz's per-channel means) and --full-taps
    does not already give them."""
    need_full_defaults = (tap_view == "grid" or full) and not full_taps
    return tuple(n for n in names if need_full_defaults or not getattr(default_spec(n), "mean_output", None))


def full_tensor(batch, spec: TapSpec) -> np.ndarray | None:
    """A tap's full (N, ...) tensor in `batch`, under its contract name or its module path; None if absent."""
    return next((batch.taps[n] for n in spec.full_names if n in batch.taps), None)


def module_tensor(batch, name: str) -> np.ndarray | None:
    """The full tensor of the tap at module path `name` in `batch` (a default's under its contract name too)."""
    return full_tensor(batch, default_spec(name) or TapSpec(name, "map", ()))


def mean_tensor(batch, spec: TapSpec) -> np.ndarray | None:
    """A map tap's (N, H, W) channel mean as the export computed it, where an output carries it."""
    return batch.taps.get(spec.mean_output) if spec.mean_output else None


def required_tensor(batch, spec: TapSpec) -> np.ndarray:
    """full_tensor, for a tap the model has (checked when the run's taps were chosen)."""
    tensor = full_tensor(batch, spec)
    if tensor is None:
        raise KeyError(f"the batch has no tap {spec.name!r}")
    return tensor


def _has(model, name: str, tap_view: str) -> bool:
    if name in model.taps:
        return True
    spec = default_spec(name)
    return spec is not None and tap_view == "mean" and spec.mean_output in model.tap_outputs


def run_tap_specs(model, names, tap_view: str = "mean", source: str = "the model") -> tuple[TapSpec, ...]:
    """The specs of `names` on this opened model, in order; a tap the model does not output is one UserInputError
    saying how to export a model that does. Shapes of taps other than the defaults are probed on one black crop."""
    missing = [n for n in names if not _has(model, n, tap_view)]
    if missing:
        check_known(missing)   # a misspelt name: say so, with the closest ones, rather than "re-export"
        wanted = ",".join(model_taps(names, tap_view))
        grid = " (tap_view grid shows every channel, so the default taps are needed in full too)" \
            if tap_view == "grid" and all(default_spec(n) for n in missing) else ""
        raise UserInputError(f"{source} has no tap {', '.join(repr(n) for n in missing)}{grid}; re-export it with "
                             f"`emoengine export --weights <your .pth> --taps {wanted}`, or run from weights",
                             options=("tap_view", "weights"))
    specs = {n: default_spec(n) for n in names}
    if any(spec is None for spec in specs.values()):
        batch = model.predict(np.zeros((1, *INPUT_SHAPE), np.uint8))
        for n in names:
            if specs[n] is None:
                specs[n] = TapSpec.of(n, required_tensor(batch, TapSpec(n, "map", ())).shape[1:])   # probed
    return tuple(spec for spec in specs.values() if spec is not None)


def face_taps(batch, k: int, specs) -> dict[str, np.ndarray]:
    """Face k's taps: module path -> its channel-mean map (2-D float32) for a map tap, its vector (1-D float32)
    for a vector tap. New arrays, so a face kept later does not keep the whole batch's tensors alive."""
    taps = {}
    for spec in specs:
        mean = mean_tensor(batch, spec)
        if spec.kind == "map" and mean is not None:
            taps[spec.name] = np.array(mean[k], np.float32)
            continue
        full = required_tensor(batch, spec)[k]
        taps[spec.name] = np.array(full, np.float32).reshape(-1) if spec.kind == "vector" else channel_mean(full)
    return taps


def channel_mean(full: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) float32, the mean over channels (a 2-D map is its own mean)."""
    full = np.asarray(full, np.float32)
    return full.mean(axis=0, dtype=np.float32) if full.ndim == 3 else np.array(full, np.float32)


def spatial_means(full: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C,) float32, each channel's mean over the map: a tap as a point in channel space, what
    encoding models and representational similarity analyses take (a 2-D map: one channel)."""
    full = np.asarray(full, np.float32)
    full = full[None] if full.ndim == 2 else full
    return full.reshape(len(full), -1).mean(axis=1, dtype=np.float32)


def face_channels(batch, k: int, specs) -> dict[str, np.ndarray]:
    """Face k's per-channel spatial means (C,) float32 of every map tap the batch holds in full."""
    out = {}
    for spec in specs:
        full = full_tensor(batch, spec) if spec.kind == "map" else None
        if full is not None:
            out[spec.name] = spatial_means(full[k])
    return out


def face_full_taps(batch, k: int, specs) -> dict[str, np.ndarray]:
    """Face k's taps untouched (--full-taps, --tap-view grid, activations.npz), by module path, where the batch
    has them."""
    out = {}
    for spec in specs:
        full = full_tensor(batch, spec)
        if full is not None:
            out[spec.name] = full[k]
    return out


def has_full(model, spec: TapSpec) -> bool:
    """Whether the opened model outputs `spec` in full (activations.npz's `<stem>_channels` need it)."""
    return spec.name in model.taps


def tap_specs_for_run(cfg, model) -> tuple[TapSpec, ...]:
    """The taps a run (engine.run.driver.RunConfig) writes with this model. An artifact without the default
    taps' outputs (a foreign export) runs without feature maps, as it always did, with a warning; any tap named
    with --taps that the model lacks is exit 2 (run_tap_specs)."""
    if not cfg.taps:
        return ()
    names = tuple(cfg.tap_names)
    if names == default_tap_names() and cfg.tap_view == "mean" and not (model.has_taps or model.has_full_taps):
        log.warning(f"warning: {cfg.weights or 'the model'} has no feature-map outputs; no tap files are written")
        return ()
    return run_tap_specs(model, names, cfg.tap_view, source=cfg.weights or "the model")
