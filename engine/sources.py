"""Frame sources: one iterator of owned RGB frames over a video file, an image, a folder, a camera or a stream.

Every frame handed out is a fresh C-contiguous (H, W, 3) uint8 array, so later stages may keep it, queue it
or draw on a copy of it without caring what the decoder does with its own buffers.
Bad input is a `UserInputError` with one line that says what is wrong with which file.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

from emoengine.errors import RunFailure, UserInputError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
     ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic"}
)
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "file")
DEFAULT_STREAM_FPS = 25.0
# A live stream may drop a packet now and then; give up only when decoding keeps failing.
MAX_CONSECUTIVE_STREAM_ERRORS = 100
STREAM_TIMEOUT_S = 15.0
MAX_REPORTED_ERRORS = 20


class Frame(NamedTuple):
    index: int          # 0-based position in the source
    time_s: float       # presentation time from the source start (pts where known)
    rgb: np.ndarray     # (H, W, 3) uint8, owned by this frame


class FrameSource:
    """Base class. Iterate once for `Frame`s; `close()` (or `with`) releases the decoder."""

    kind: str = "?"                 # "video" | "image" | "images" | "stream"
    fps: float = DEFAULT_STREAM_FPS
    frame_count: int | None = None  # None when unknown (streams, cameras)
    size: tuple[int, int] = (0, 0)  # (w, h) of the first frame
    name: str = ""

    _iterated = False

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise RuntimeError(f"{self.name}: a FrameSource can be iterated only once")
        self._iterated = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, name={self.name!r}, fps={self.fps:g}, "
                f"frame_count={self.frame_count}, size={self.size})")


def open_source(spec: str | os.PathLike, *, fps: float | None = None) -> FrameSource:
    """Open what the user named. `fps` sets the frame rate of image inputs (default 1.0); videos keep theirs."""
    spec = os.fspath(spec)
    scheme = urlparse(spec).scheme.lower() if "://" in spec else ""
    if scheme in STREAM_SCHEMES:
        return PyAVSource(spec, kind="stream")
    if scheme:
        raise UserInputError(f"unsupported stream URL scheme {scheme!r}: {spec} "
                             f"(supported: {', '.join(STREAM_SCHEMES)})")
    if spec.isdigit() and not Path(spec).exists():
        return CameraSource(int(spec))
    path = Path(spec)
    if not path.exists():
        raise UserInputError(f"no such file or folder: {spec}")
    if path.is_dir():
        return ImageFolderSource(path, fps=fps)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFileSource(path, fps=fps)
    return open_video_file(path)


def open_video_file(path: Path) -> FrameSource:
    """PyAV first (frame threading, exact pts); OpenCV when PyAV cannot open the file at all."""
    if path.stat().st_size == 0:
        raise UserInputError(f"not a readable video: {path} (empty file)")
    cut = container_truncation(path)
    if cut:
        raise UserInputError(f"truncated video: {path} ({cut}); it was probably cut off while being written")
    try:
        return PyAVSource(str(path), kind="video")
    except _CannotOpen as e:
        # OpenCV bundles its own FFmpeg build: worth a try when PyAV lacks a decoder, not when the data
        # itself is unrecognisable (the same probe would only fail again, noisily).
        cv_source = None if e.final else OpenCVVideoSource.try_open(path)
        if cv_source is not None:
            return cv_source
        raise UserInputError(f"not a readable video: {path} ({e})") from None


# --------------------------------------------------------------------------- PyAV: files and streams


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
        except av.FFmpegError as e:
            raise self._open_error(_ffmpeg_message(e), final=isinstance(e, av.InvalidDataError)) from None
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
            self.frame_count = (self._indexed_count or self._estimated_count()) if kind == "video" else None
            self._t0: float | None = None
            self._decoded = 0
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

    def _estimated_count(self) -> int | None:
        """Containers without a frame index (mkv, webm): duration × fps, or None."""
        c, s = self._container, self._stream
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
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as e:  # reading failed: a broken file, or a stream that stopped or stalled
                if self.kind == "video":  # nothing after this point can be read: keep what came, report it
                    self._record_error(f"reading fails ({_ffmpeg_message(e)})")
                    yield from self._flush()
                    return
                why = (f"no data for {STREAM_TIMEOUT_S:g} s" if isinstance(e, av.ExitError)  # the read timeout
                       else _ffmpeg_message(e))
                yield from self._flush()  # frames still inside the (frame-threaded) decoder came in whole
                raise RunFailure(f"stream {self.name} stopped after frame {self._decoded} ({why})") from None
            try:
                decoded = packet.decode()
                consecutive_errors = 0
            except av.FFmpegError as e:
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
        except self._av.FFmpegError:
            return
        for frame in decoded:
            yield self._to_frame(frame)

    def _to_frame(self, frame) -> Frame:
        rgb = frame.to_ndarray(format="rgb24")  # colorspace from the frame's tags; full range comes as yuvj
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


def container_truncation(path: Path) -> str | None:
    """Why a video file is visibly cut short (its container's own sizes run past the end), or None.

    MP4/MOV, Matroska/WebM and AVI say how long they are before their data; a copy or download that stopped
    half way is refused at once instead of yielding a few frames as if that were the whole video.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return mp4_truncation(path)
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return matroska_truncation(path)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return riff_truncation(path)
    return None


def _ebml_vint(f, keep_marker: bool) -> tuple[int, bool] | None:
    """One EBML variable-length integer: (value, all-ones "unknown size"), or None at EOF / invalid."""
    first = f.read(1)
    if not first or first[0] == 0:
        return None
    length = 9 - first[0].bit_length()          # leading zero bits + 1
    rest = f.read(length - 1)
    if len(rest) < length - 1:
        return None
    value = first[0] if keep_marker else first[0] & ((1 << (8 - length)) - 1)
    for b in rest:
        value = (value << 8) | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, unknown


_MKV_SEGMENT, _MKV_CLUSTER = 0x18538067, 0x1F43B675
_MKV_NAMES = {_MKV_SEGMENT: "Segment", _MKV_CLUSTER: "Cluster", 0x1C53BB6B: "Cues", 0x114D9B74: "SeekHead",
              0x1549A966: "Info", 0x1654AE6B: "Tracks"}


def matroska_truncation(path: Path, max_elements: int = 1_000_000) -> str | None:
    """Matroska/WebM: the Segment (or, where a live muxer left its size unknown, one of its top-level
    elements) runs past the end of the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = _ebml_vint(f, True)
            length = _ebml_vint(f, False)
            if header is None or length is None or length[1]:
                return None
            f.seek(length[0], os.SEEK_CUR)     # skip the EBML header's content
            seg_id, seg_size = _ebml_vint(f, True), _ebml_vint(f, False)
            if seg_id is None or seg_id[0] != _MKV_SEGMENT or seg_size is None:
                return None
            start = f.tell()
            if not seg_size[1]:
                if start + seg_size[0] > size:
                    return (f"the file ends inside its Matroska Segment: {size - start} of {seg_size[0]} bytes "
                            "present")
                return None
            pos = start                             # unknown Segment size: walk its children
            for _ in range(max_elements):
                f.seek(pos)
                child, child_size = _ebml_vint(f, True), _ebml_vint(f, False)
                if child is None or child_size is None or child_size[1]:
                    return None
                data = f.tell()
                if data + child_size[0] > size:
                    name = _MKV_NAMES.get(child[0], f"0x{child[0]:X}")
                    return f"the file ends inside a Matroska {name}: {size - data} of {child_size[0]} bytes present"
                pos = data + child_size[0]
                if pos >= size:
                    return None
    except (OSError, ValueError):
        return None
    return None


def riff_truncation(path: Path) -> str | None:
    """AVI: a top-level RIFF chunk (the first, or an AVIX extension of a large file) runs past the end."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                tag, length = struct.unpack("<4sI", f.read(8))
                if tag not in (b"RIFF", b"JUNK", b"LIST"):
                    return None
                if pos + 8 + length > size:
                    return f"the file ends inside its RIFF chunk: {size - pos - 8} of {length} bytes present"
                pos += 8 + length + (length & 1)
    except (OSError, struct.error):
        return None
    return None


def mp4_truncation(path: Path) -> str | None:
    """Why an ISO-BMFF file (mp4/mov/m4v/3gp) is truncated, or None (not one, or complete).

    Walks the top-level boxes only (a few reads): a box that runs past the end of the file, or a file with
    media data but no `moov` index (the index is written last unless muxed with faststart).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[4:8] != b"ftyp":
                return None
            f.seek(0)
            pos, seen = 0, set()
            while pos + 8 <= size:
                f.seek(pos)
                box_size, box_type = struct.unpack(">I4s", f.read(8))
                header = 8
                if box_size == 1:
                    box_size = struct.unpack(">Q", f.read(8))[0]
                    header = 16
                elif box_size == 0:  # "extends to end of file"
                    box_size = size - pos
                if box_size < header:
                    return None  # not a box structure we understand; let the decoder judge
                name = box_type.decode("latin-1")
                seen.add(name)
                if pos + box_size > size:
                    return (f"the file ends inside its '{name}' box: {size - pos} of {box_size} bytes present"
                            + ("" if "moov" in seen else ", and there is no 'moov' index"))
                pos += box_size
            if "mdat" in seen and "moov" not in seen and "moof" not in seen:
                return "it has media data but no 'moov' index"
    except (OSError, struct.error):
        return None
    return None


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

    def _read_first(self, what: str) -> None:
        ok, bgr = self._cap.read()
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
    def try_open(cls, path: Path) -> "OpenCVVideoSource | None":
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
        self._read_first(f"not a readable video: {path}")

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
        self._read_first(f"cannot read from camera {index}")
        self._t0 = time.monotonic()

    def _time_s(self, index: int) -> float:
        return time.monotonic() - self._t0


# --------------------------------------------------------------------------- images


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any image OpenCV reads; unicode paths, grey/alpha/16-bit, EXIF orientation."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserInputError(f"cannot read image {path}: {e.strerror or e}") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # gray->3ch, alpha dropped, 16->8 bit
    if bgr is None:
        raise UserInputError(f"not a readable image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def natural_key(name: str) -> list:
    """'img2' before 'img10', case-insensitive."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class ImageFileSource(FrameSource):
    kind = "image"

    def __init__(self, path: Path, fps: float | None = None) -> None:
        self.name = str(path)
        self.fps = float(fps or 1.0)
        self.frame_count = 1
        self._rgb = read_image(path)
        self.size = (self._rgb.shape[1], self._rgb.shape[0])

    def _frames(self) -> Iterator[Frame]:
        rgb, self._rgb = self._rgb, None
        yield Frame(0, 0.0, rgb)


class ImageFolderSource(FrameSource):
    """Images of a folder in natural order (hidden files and non-images skipped); time = index / fps."""

    kind = "images"

    def __init__(self, folder: Path, fps: float | None = None) -> None:
        self.name = str(folder)
        self.fps = float(fps or 1.0)
        self.paths = sorted(
            (p for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
            key=lambda p: natural_key(p.name),
        )
        if not self.paths:
            raise UserInputError(f"no images in folder: {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        self.frame_count = len(self.paths)
        self.skipped: list[str] = []
        self._first = None
        for path in self.paths:  # the first readable image gives the size
            self._first = self._read_or_skip(path)
            if self._first is not None:
                break
        if self._first is None:
            raise UserInputError(f"no readable image in folder: {folder}")
        self.size = (self._first.shape[1], self._first.shape[0])

    def _read_or_skip(self, path: Path) -> np.ndarray | None:
        """One unreadable file must not sink a 100,000-image dataset run: warn, skip, remember it."""
        try:
            return read_image(path)
        except UserInputError as e:
            self.skipped.append(path.name)
            print(f"emoengine: warning: skipping {path.name}: {e}", file=sys.stderr)
            return None

    def _frames(self) -> Iterator[Frame]:
        """Frame index = position in `paths` (kept for skipped files, so index → file stays exact)."""
        first, self._first = self._first, None   # the first readable file, already read in __init__
        for i, path in enumerate(self.paths):
            if path.name in self.skipped:
                continue
            if first is not None:
                rgb, first = first, None
            else:
                rgb = self._read_or_skip(path)
                if rgb is None:
                    continue
            yield Frame(i, i / self.fps, rgb)
