"""Video files and streams decoded by PyAV, OpenCV as the fallback decoder for files, and cameras.

Bad input is a `UserInputError` with one line that says what is wrong with which file; a stream that stops or
keeps failing while running is a `RunFailure`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

from emoengine.engine.sources.frame_source import DEFAULT_STREAM_FPS, Frame, FrameSource
from emoengine.errors import RunFailure, UserInputError

if TYPE_CHECKING:
    import av.container

# A live stream may drop a packet now and then; give up only when decoding keeps failing.
MAX_CONSECUTIVE_STREAM_ERRORS = 100
STREAM_TIMEOUT_S = 15.0
MAX_REPORTED_ERRORS = 20


class _CannotOpen(Exception):
    """PyAV could not open or start decoding; unless `final`, the caller may try OpenCV."""

    def __init__(self, why: str, final: bool = False) -> None:
        super().__init__(why)
        self.final = final


def _ffmpeg_message(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).splitlines()[0] if msg else type(e).__name__


def _owned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array that owns its memory (decoders hand out views of pooled frame buffers)."""
    if a.flags.c_contiguous and a.flags.owndata:
        return a
    return np.array(a, order="C", copy=True)


class PyAVSource(FrameSource):
    """Video file ("video") or URL ("stream") decoded by PyAV with frame threading.

    Files: a frame that fails to decode is skipped and counted (`bad_frames`, `decode_errors`), so the good
    frames of a damaged video still get processed; the caller reports the loss (run: exit 2, outputs kept).
    Fewer frames than the container's index promises, with no error to explain it, is a `UserInputError`.
    Streams: broken packets are skipped (live streams lose some); frame_count is None.
    """

    def __init__(self, url: str, kind: str) -> None:
        import av
        import av.error  # its exception types (av re-exports them, but not in its __all__)
        import av.video.reformatter

        self.kind = kind
        self.name = url
        self._av = av
        target = url
        options: dict[str, str] = {}
        if kind == "stream":
            parsed = urlparse(url)
            if parsed.scheme == "file":
                target = unquote(parsed.path)  # same stream code path, local file: tests and replays
            if parsed.scheme.startswith("rtsp"):
                options["rtsp_transport"] = "tcp"
        try:
            self._container = av.open(target, options=options,
                                      timeout=STREAM_TIMEOUT_S if kind == "stream" else None)
        except av.error.FFmpegError as e:
            raise self._open_error(_ffmpeg_message(e), final=isinstance(e, av.error.InvalidDataError)) from None
        except OSError as e:  # e.g. permission denied
            raise UserInputError(f"cannot open {url}: {e.strerror or e}") from None
        try:
            if not self._container.streams.video:
                raise self._open_error("no video stream in it", final=True)
            self._stream = stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(rate) if rate and 0 < float(rate) < 1000 else DEFAULT_STREAM_FPS
            self._indexed_count = int(stream.frames or 0) if kind == "video" else 0
            self.frame_count = (self._indexed_count or self._estimated_count(self._container)) if kind == "video" else None
            self._t0: float | None = None
            self._decoded = 0
            # one converter for the whole video: a frame's own makes a new swscale context at every frame
            # (measured, 720p H.264: 0.63 -> 0.31 ms of CPU and 1.7 -> 0.5 ms of wall time a frame, same pixels)
            self._to_rgb = av.video.reformatter.VideoReformatter()
            self.bad_frames = 0                    # video files: frames lost to decode errors (skipped)
            self.decode_errors: list[dict] = []    # the first MAX_REPORTED_ERRORS of them
            self._gen = self._decode()
            try:
                first = next(self._gen, None)
            except RunFailure as e:  # a stream that fails before its first frame never opened
                raise UserInputError(f"cannot open stream {url}: {e}") from None
            if first is None:
                raise self._open_error("no decodable video frames")
            self._first = first
            self.size = (first.rgb.shape[1], first.rgb.shape[0])
        except BaseException:
            self.close()
            raise

    def _open_error(self, why: str, final: bool = False) -> Exception:
        if self.kind == "stream":
            return UserInputError(f"cannot open stream {self.name}: {why}")
        return _CannotOpen(why, final)

    def _estimated_count(self, c: av.container.InputContainer) -> int | None:
        """Containers without a frame index (mkv, webm): duration × fps, or None."""
        s = self._stream
        if s.duration is not None and s.time_base is not None:
            seconds = float(s.duration * s.time_base)
        elif c.duration is not None:
            seconds = c.duration / 1_000_000
        else:
            return None
        return max(1, round(seconds * self.fps)) if seconds > 0 else None

    def _frames(self) -> Iterator[Frame]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._gen

    def _decode(self) -> Iterator[Frame]:
        av = self._av
        consecutive_errors = 0
        if self._container is None:   # closed before the first frame was asked for
            return
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as e:  # reading failed: a broken file, or a stream that stopped or stalled
                if self.kind == "video":  # nothing after this point can be read: keep what came, report it
                    self._record_error(f"reading fails ({_ffmpeg_message(e)})")
                    yield from self._flush()
                    return
                why = (f"no data for {STREAM_TIMEOUT_S:g} s" if isinstance(e, av.error.ExitError)  # the read timeout
                       else _ffmpeg_message(e))
                yield from self._flush()  # frames still inside the (frame-threaded) decoder came in whole
                raise RunFailure(f"stream {self.name} stopped after frame {self._decoded} ({why})") from None
            try:
                decoded = packet.decode()
                consecutive_errors = 0
            except av.error.FFmpegError as e:
                if self.kind == "video":  # a damaged frame: skip it, keep decoding, report it at the end
                    self._record_error(_ffmpeg_message(e))
                    continue
                consecutive_errors += 1
                if consecutive_errors >= MAX_CONSECUTIVE_STREAM_ERRORS:
                    raise RunFailure(f"stream {self.name} keeps failing to decode after frame "
                                     f"{self._decoded} ({_ffmpeg_message(e)})") from None
                continue
            for frame in decoded:
                yield self._to_frame(frame)
        self._check_complete()

    def _record_error(self, why: str) -> None:
        """A frame that could not be decoded (files only): counted, the first few kept for the summary."""
        self.bad_frames += 1
        if len(self.decode_errors) < MAX_REPORTED_ERRORS:
            self.decode_errors.append({"after_frame": self._decoded - 1, "error": why})

    def _flush(self) -> Iterator[Frame]:
        try:
            decoded = self._stream.codec_context.decode(None)
        except self._av.error.FFmpegError:
            return
        for frame in decoded:
            yield self._to_frame(frame)

    def _to_frame(self, frame) -> Frame:
        # colorspace from the frame's tags; full range comes as yuvj
        rgb = self._to_rgb.reformat(frame, format="rgb24").to_ndarray()
        rotation = frame.rotation  # display matrix, degrees counter-clockwise (phone videos)
        if rotation:
            rgb = np.rot90(rgb, round(rotation / 90) % 4)
        index = self._decoded
        self._decoded += 1
        if frame.time is not None:
            if self._t0 is None:
                self._t0 = frame.time
            time_s = float(frame.time - self._t0)
        else:
            time_s = index / self.fps
        return Frame(index, time_s, _owned(rgb))

    def _check_complete(self) -> None:
        """An mp4/mov index says how many frames there are; a file cut short decodes fewer without an error."""
        expected = self._indexed_count
        seen = self._decoded + self.bad_frames
        if self.kind == "video" and expected and seen < expected - max(2, expected // 100):
            raise UserInputError(f"corrupt or truncated video: {self.name}: it ends at frame {self._decoded} "
                                 f"of the {expected} its index lists")

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            self._container = None
            gen = getattr(self, "_gen", None)
            if gen is not None:
                gen.close()
            container.close()


# --------------------------------------------------------------------------- OpenCV: fallback and cameras


@contextmanager
def _quiet_opencv():
    """OpenCV logs every backend it tries to stderr; our one-line error says it better."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


class _CvCaptureSource(FrameSource):
    """Shared by the OpenCV video fallback and cameras: BGR frames from cv2.VideoCapture, converted to RGB."""

    _cap: cv2.VideoCapture | None = None

    def _read_first(self, cap: cv2.VideoCapture, what: str) -> None:
        ok, bgr = cap.read()
        if not ok or bgr is None:
            self.close()
            raise UserInputError(f"{what}: no frames could be read")
        self._first_bgr = bgr
        self.size = (bgr.shape[1], bgr.shape[0])

    def _frames(self) -> Iterator[Frame]:
        bgr, self._first_bgr = self._first_bgr, None
        index = 0
        while bgr is not None:
            yield Frame(index, self._time_s(index), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
            ok, bgr = self._cap.read() if self._cap is not None else (False, None)
            if not ok:
                bgr = None

    def _time_s(self, index: int) -> float:
        raise NotImplementedError

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class OpenCVVideoSource(_CvCaptureSource):
    """Fallback decoder for files PyAV refuses; timestamps from CAP_PROP_POS_MSEC, counts approximate."""

    kind = "video"

    @classmethod
    def try_open(cls, path: Path) -> OpenCVVideoSource | None:
        with _quiet_opencv():
            cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            return None
        try:
            return cls(path, cap)
        except UserInputError:
            return None

    def __init__(self, path: Path, cap: cv2.VideoCapture) -> None:
        self._cap = cap
        self.name = str(path)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else DEFAULT_STREAM_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self._read_first(cap, f"not a readable video: {path}")

    def _time_s(self, index: int) -> float:
        ms = self._cap.get(cv2.CAP_PROP_POS_MSEC) if self._cap is not None else 0.0
        return ms / 1000.0 if index == 0 or ms > 0 else index / self.fps


class CameraSource(_CvCaptureSource):
    """A local camera by index; time is the wall clock since the first frame (cameras have no useful pts)."""

    kind = "stream"

    def __init__(self, index: int) -> None:
        self.name = f"camera {index}"
        with _quiet_opencv():
            self._cap = cv2.VideoCapture(index)
        if not self._cap.isOpened():
            self.close()
            raise UserInputError(f"cannot open camera {index} (no such device, or it is busy)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else DEFAULT_STREAM_FPS
        self.frame_count = None
        self._read_first(self._cap, f"cannot read from camera {index}")
        self._t0 = time.monotonic()

    def _time_s(self, index: int) -> float:
        return time.monotonic() - self._t0
