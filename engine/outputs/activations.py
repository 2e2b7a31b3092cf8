"""activations.npz (`--save-activations`): every tap of every face, one array per tap, rows in predictions.csv's
order, written as the rows arrive; and `Activations`, the same arrays read back (Engine.analyze's).

Keys: `frames`, `face_ids` (int64) and `time_s` (float64), one entry per row, index predictions.csv's
(frame, face_id) rows. Per map tap: `<stem>_channels` (rows, C) float32, each channel's mean over the map, a
time course per channel (what encoding models and representational similarity analyses start from; needs the
tap in full, which a run from weights exports); and `<stem>` (rows, C, H, W) float16 in full with full_taps,
else `<stem>_mean` (rows, H, W) float16, the channel-mean map the videos show. Per vector tap: `<stem>`
(rows, F) float16. Each array grows in a temporary file of its own (memory stays flat however long the input);
commit zips them under a temporary name and renames it, so no half-written archive carries the final name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from emoengine.contract import TapSpec, tap_file_stem
from emoengine.engine.outputs.writers import AtomicOutput
from emoengine.engine.run.records import FaceResult, FrameRecord

log = logging.getLogger(__name__)

ACTIVATIONS_NAME = "activations.npz"
INDEX_KEYS = ("frames", "face_ids", "time_s")
_COPY_BYTES = 1 << 20

Getter = Callable[[FrameRecord, FaceResult], "np.ndarray | np.generic"]


class _Column:
    """One array of the archive: rows of one shape and dtype appended to a raw temporary file."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...], get: Getter) -> None:
        self.path, self.dtype, self.shape, self.get = path, np.dtype(dtype), tuple(shape), get
        self.rows = 0
        self.file = open(path, "wb")   # noqa: SIM115  closed by finish/abort, after the last row

    def add(self, fr: FrameRecord, face: FaceResult) -> None:
        row = np.asarray(self.get(fr, face), self.dtype)
        if row.shape != self.shape:
            raise ValueError(f"{self.path.stem}: a row of shape {row.shape}, not {self.shape}")
        self.file.write(row.tobytes())
        self.rows += 1

    def zip_into(self, zf: zipfile.ZipFile, key: str) -> None:
        """The rows as `<key>.npy` in `zf`: an .npy header, then the raw rows copied in chunks."""
        self.file.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.shape)}
        with zf.open(f"{key}.npy", "w", force_zip64=True) as out, open(self.path, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, _COPY_BYTES)
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.file.close()


def activation_columns(spec: TapSpec, full: bool, has_full: bool) -> list[tuple[str, str, tuple[int, ...], Getter]]:
    """The archive's arrays of one tap: (key, dtype, shape per row, how a row is read from a frame and a face)."""
    name = spec.name
    if spec.kind == "vector":
        return [(spec.stem, "float16", (spec.size,), lambda fr, f: f.taps[name])]
    columns: list[tuple[str, str, tuple[int, ...], Getter]] = []
    if has_full:
        columns.append((f"{spec.stem}_channels", "float32", (spec.channels,), lambda fr, f: f.channels[name]))
    if full:
        columns.append((spec.stem, "float16", spec.shape, lambda fr, f: fr.full_maps[f.face_id][name]))
    else:
        mean_shape = spec.shape[1:] if len(spec.shape) == 3 else spec.shape
        columns.append((f"{spec.stem}_mean", "float16", mean_shape, lambda fr, f: f.taps[name]))
    return columns


class ActivationsWriter:
    """activations.npz of one run: `add(frame, face)` once per predictions.csv row, in its order; `finish()`
    zips under the temporary name, `commit()` renames, `abort()` removes every temporary file.

    `full`: every tap in full (full_taps); `has_full`: the module paths the model outputs in full (their
    per-channel means are kept); a map tap without is written without `<stem>_channels`, with a warning."""

    def __init__(self, path: Path, specs: Iterable[TapSpec], full: bool, has_full: Iterable[str]) -> None:
        specs, has_full = tuple(specs), set(has_full)
        self.full = full
        self.out = AtomicOutput(path)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{Path(path).name}.rows-{os.getpid()}-", dir=Path(path).parent))
        self.columns: dict[str, _Column] = {}
        try:
            index: list[tuple[str, str, tuple[int, ...], Getter]] = [
                ("frames", "int64", (), lambda fr, f: np.int64(fr.index)),
                ("face_ids", "int64", (), lambda fr, f: np.int64(f.face_id)),
                ("time_s", "float64", (), lambda fr, f: np.float64(fr.time_s))]
            for spec in specs:
                if spec.kind == "map" and spec.name not in has_full:
                    log.warning(f"warning: the model has no full {spec.name} tensor, so {path} holds no "
                                f"{spec.stem}_channels (run from weights, or re-export with --full-taps)")
                index += activation_columns(spec, full, spec.name in has_full)
            for i, (key, dtype, shape, get) in enumerate(index):
                self.columns[key] = _Column(self._tmp / f"{i:03d}.raw", dtype, shape, get)
        except BaseException:
            self.abort()
            raise

    @property
    def needs_channels(self) -> bool:
        return any(key.endswith("_channels") for key in self.columns)

    def add(self, fr: FrameRecord, face: FaceResult) -> None:
        for column in self.columns.values():
            column.add(fr, face)

    def finish(self) -> None:
        """Zip every array into the temporary file (a second call does nothing)."""
        if not self._tmp.is_dir():
            return
        with zipfile.ZipFile(self.out.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, column in self.columns.items():
                column.zip_into(zf, key)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def commit(self) -> Path:
        self.finish()
        return self.out.commit()

    def abort(self) -> None:
        for column in self.columns.values():
            column.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self.out.abort()


class Activations:
    """activations.npz read back: `frames`, `face_ids`, `time_s` (rows,), predictions.csv's row order;
    `[name]` a tap's array by module path or stem (`conv1`, `emo_net_2.0.conv1`; its `<stem>` or `<stem>_mean`,
    rows first); `channels(name)` its (rows, C) per-channel means; `keys()` every array. Arrays are read when
    first asked for and kept; `close()` (or leaving `with`) closes the file."""

    def __init__(self, path, taps: Iterable[dict] = ()) -> None:
        self.path = Path(path)
        self._stems = {t["name"]: t["stem"] for t in taps if "name" in t and "stem" in t}
        self._npz = np.load(self.path, allow_pickle=False)
        self._cache: dict[str, np.ndarray] = {}

    def keys(self) -> list[str]:
        return list(self._npz.files)

    def array(self, key: str) -> np.ndarray:
        """One array by its key in the file."""
        if key not in self._cache:
            self._cache[key] = self._npz[key]
        return self._cache[key]

    @property
    def frames(self) -> np.ndarray:
        return self.array("frames")

    @property
    def face_ids(self) -> np.ndarray:
        return self.array("face_ids")

    @property
    def time_s(self) -> np.ndarray:
        return self.array("time_s")

    def stem(self, name: str) -> str:
        return self._stems.get(name) or tap_file_stem(name)

    def __getitem__(self, name: str) -> np.ndarray:
        stem = self.stem(name)
        for key in (stem, f"{stem}_mean"):
            if key in self._npz.files:
                return self.array(key)
        raise KeyError(f"{self.path} holds no tap {name!r} (keys: {', '.join(self.keys())})")

    def channels(self, name: str) -> np.ndarray:
        key = f"{self.stem(name)}_channels"
        if key not in self._npz.files:
            raise KeyError(f"{self.path} holds no per-channel means of {name!r} (a model without it in full)")
        return self.array(key)

    def __len__(self) -> int:
        return len(self.frames)

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> Activations:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Activations({str(self.path)!r}, rows={len(self)}, keys={self.keys()})"
