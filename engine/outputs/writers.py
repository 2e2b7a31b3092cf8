"""Outputs that appear under their final names only when complete (CONTRACT: "Files appear ... when complete").

Everything is written to a hidden temporary file next to the final one (same directory, so the rename is
atomic on one filesystem) and renamed by `commit()`; `abort()` or an exception deletes it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np

from emoengine.errors import RunFailure


class _CloseOrAbort:
    """`with writer:` finishes (close: flush + rename) on a clean exit and aborts on an exception."""

    def __enter__(self):
        return self

    def close(self) -> Path | None:   # the subclass's: flush and rename into place
        raise NotImplementedError

    def abort(self) -> None:   # the subclass's: remove the temporary file
        raise NotImplementedError

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class AtomicOutput:
    """A temporary path beside `final_path` (suffix kept, so muxers guess the format) and its rename.

    `with AtomicOutput(p) as out: write(out.path)` commits on a clean exit and aborts on an exception.
    `path` (= `tmp_path`) is where to write; `final_path` is where the file appears on `commit()`.
    """

    def __init__(self, final_path: str | os.PathLike) -> None:
        self.final_path = Path(final_path)
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        name = f".{self.final_path.name}.partial-{os.getpid()}-{secrets.token_hex(3)}{self.final_path.suffix}"
        self.tmp_path = self.final_path.with_name(name)
        self.state = "open"  # -> "committed" | "aborted"

    @property
    def path(self) -> Path:
        """Where to write: the temporary file."""
        return self.tmp_path

    def commit(self) -> Path:
        """Rename the finished temporary file to the final name (replacing an older one)."""
        if self.state != "open":
            raise RuntimeError(f"{self.final_path}: already {self.state}")
        if not self.tmp_path.exists():
            self.state = "aborted"
            raise RunFailure(f"nothing was written for {self.final_path}")
        try:
            os.replace(self.tmp_path, self.final_path)
        except OSError as e:
            self.abort()
            raise RunFailure(f"cannot write {self.final_path}: {e.strerror or e}") from None
        self.state = "committed"
        return self.final_path

    def abort(self) -> None:
        """Delete the temporary file; the final name is left untouched. Safe to call twice."""
        if self.state == "committed":
            return
        self.state = "aborted"
        with contextlib.suppress(OSError):
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.state == "open":
            self.commit()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with AtomicOutput(path) as out:
        out.tmp_path.write_bytes(data)
    return out.final_path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Pretty JSON (numpy scalars/arrays allowed), e.g. summary.json."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """An RGB (or grey) uint8 image as PNG, atomically."""
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"write_png needs uint8 (H,W) or (H,W,3), got {image.dtype} {image.shape}")
    import cv2  # imported where drawn: the atomic writers serve machines without OpenCV too (the GPU bench)

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RunFailure(f"cannot encode PNG for {path}")
    return write_bytes_atomic(path, buf.tobytes())


class AtomicTextWriter(_CloseOrAbort):
    """A text file written line by line (e.g. while frames stream through) that appears only on `close()`."""

    def __init__(self, path: str | os.PathLike, *, newline: str | None = None, encoding: str = "utf-8") -> None:
        self._out = AtomicOutput(path)
        self.final_path = self._out.final_path
        # open until close()/abort(), across many write() calls: no `with` can hold it
        self.file = open(self._out.tmp_path, "w", newline=newline, encoding=encoding)  # noqa: SIM115

    def write(self, text: str) -> None:
        self.file.write(text)

    def finish(self) -> None:
        """Flush and close the temporary file, not yet renamed (the first half of `close`)."""
        if not self.file.closed:
            self.file.close()

    def commit(self) -> Path:
        """Rename the finished file into place (the second half of `close`)."""
        self.finish()
        return self._out.commit()

    def close(self) -> Path:
        """Flush and rename into place."""
        if self._out.state != "open":
            return self.final_path
        return self.commit()

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self._out.abort()


class CsvWriter(AtomicTextWriter):
    """CSV rows (dicts keyed by `fieldnames`) streamed to a temporary file, e.g. predictions.csv.

    `float_format` (e.g. "{:.6f}") formats float values; None writes Python's shortest repr.
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str], *,
                 float_format: str | None = None) -> None:
        super().__init__(path, newline="")
        self.fieldnames = list(fieldnames)
        self.float_format = float_format
        self.rows = 0
        self._writer = csv.DictWriter(self.file, fieldnames=self.fieldnames, extrasaction="raise")
        self._writer.writeheader()

    def _format(self, value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and self.float_format is not None and math.isfinite(value):
            return self.float_format.format(value)
        return value

    def writerow(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({k: self._format(v) for k, v in row.items()})
        self.rows += 1

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.writerow(row)


# --------------------------------------------------------------------------- video


_NTSC_BASES = (24, 30, 48, 60, 120, 240)


def as_frame_rate(fps: float | Fraction | int) -> Fraction:
    """An exact rate for the muxer: 29.97 -> 30000/1001 (what cameras mean by it), 25.0 -> 25."""
    if isinstance(fps, Fraction):
        rate = fps
    else:
        value = float(fps)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"frame rate must be positive, got {fps!r}")
        rate = next((Fraction(b * 1000, 1001) for b in _NTSC_BASES if abs(value - b * 1000 / 1001) < 2e-3),
                    Fraction(value).limit_denominator(1001))
    if rate <= 0:
        raise ValueError(f"frame rate must be positive, got {fps!r}")
    return rate


def fit_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` letterboxed into (w, h) keeping its aspect ratio (frames of a folder of mixed-size images)."""
    w, h = size
    ih, iw = rgb.shape[:2]
    if (iw, ih) == (w, h):
        return rgb
    import cv2

    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((h, w, 3), np.uint8)
    x0, y0 = (w - nw) // 2, (h - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = resized
    return out


def _reason(e: Exception) -> str:
    """An OS error's own words without the temporary file name FFmpeg attaches ("No space left on device")."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


class VideoWriter(_CloseOrAbort):
    """H.264 (libx264, yuv420p, BT.601 matrix, BT.709 primaries, limited range) video written under a temporary
    name, renamed on `close()`.

    crf 20 / preset veryfast by default (engine.outputs.encoders picks faster settings for `run`, by measurement). The
    RGB -> YUV 4:2:0 conversion is OpenCV's (BT.601, limited range, as tagged): 2-3x cheaper than swscale's
    (measured: 2.4 vs 7-9 ms per 720p frame). Odd sizes are padded to even with black (4:2:0 needs even sides);
    frames of another size than `size` are letterboxed into it.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, size: tuple[int, int], *,
                 crf: int = 20, preset: str = "veryfast", threads: int | None = None,
                 bframes: int | None = None, output: AtomicOutput | None = None) -> None:
        """`threads`: encoder threads (None: x264 picks; fewer leaves cores to inference); `bframes`: x264's
        B-frames (None: the preset's; fewer holds fewer frames in memory); `output`: the temporary file and its
        rename, where another process commits it (engine.outputs.encoder_process); None: a new one for `path`."""
        import av
        import av.error  # its exception types (av re-exports them, but not in its __all__)

        self._av = av
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"video size must be positive, got {size}")
        self.size = (w, h)
        self.coded_size = (w + w % 2, h + h % 2)
        self.rate = as_frame_rate(fps)
        self.frames_written = 0
        self._out = output if output is not None else AtomicOutput(path)
        self.final_path = self._out.final_path
        options = {"movflags": "+faststart"} if self.final_path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self._container = av.open(str(self._out.tmp_path), "w", container_options=options)
            stream = self._container.add_stream("libx264", rate=self.rate)
            stream.width, stream.height = self.coded_size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.options = {"crf": str(crf), "preset": preset,
                                            **({} if bframes is None else {"bf": str(bframes)})}
            cc = stream.codec_context
            if threads:
                cc.thread_count = int(threads)
            # MPEG range, BT.601 (SMPTE 170M) matrix as converted in `write`, BT.709 (sRGB) primaries and transfer
            cc.color_range, cc.colorspace, cc.color_primaries, cc.color_trc = 1, 6, 1, 1
            self._stream = stream
        except Exception as e:  # noqa: BLE001  PyAV's codec setup raises many kinds: one RunFailure line
            self.abort()
            raise RunFailure(f"cannot start video {self.final_path}: {e}") from None
        self._time_base = Fraction(1) / self.rate

    def write(self, rgb: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame (not modified, not kept)."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"VideoWriter needs uint8 (H,W,3) RGB, got {rgb.dtype} {rgb.shape}")
        import cv2  # here, not at the top: the GPU plan imports this module where OpenCV is missing

        image = fit_frame(rgb, self.size)
        if self.coded_size != self.size:
            image = cv2.copyMakeBorder(image, 0, self.coded_size[1] - self.size[1], 0,
                                       self.coded_size[0] - self.size[0], cv2.BORDER_CONSTANT, value=0)
        if self._container is None:
            raise RuntimeError(f"{self.final_path} is finished: no frame can be added")
        av = self._av
        yuv = cast(np.ndarray, cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420))   # OpenCV's stubs: MatLike
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.frames_written
        frame.time_base = self._time_base
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            self.abort()
            raise RunFailure(f"video encoding failed for {self.final_path}: {_reason(e)}") from None
        self.frames_written += 1

    def finish(self) -> bool:
        """Flush the encoder and close the temporary file, not yet renamed (the first half of `close`).

        False, and nothing kept, when no frame was written."""
        if self._out.state != "open":
            return self._out.state == "committed"
        if self._container is None:
            return True   # finished already
        if self.frames_written == 0:
            self.abort()
            return False
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except (self._av.error.FFmpegError, OSError) as e:   # e.g. the disk filled up while writing the index
            self.abort()
            raise RunFailure(f"video encoding failed for {self.final_path}: {_reason(e)}") from None
        self._container = None
        return True

    def commit(self) -> Path:
        """Rename the finished file into place (the second half of `close`)."""
        if not self.finish():
            raise RunFailure(f"nothing was written for {self.final_path}")
        return self._out.commit()

    def close(self) -> Path | None:
        """Flush the encoder and rename into place; with no frames written nothing is created (None)."""
        if self._out.state != "open":
            return self.final_path if self._out.state == "committed" else None
        if not self.finish():
            return None
        return self._out.commit()

    def abort(self) -> None:
        """Stop and delete the temporary file."""
        container = getattr(self, "_container", None)
        self._container = None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        self._out.abort()
