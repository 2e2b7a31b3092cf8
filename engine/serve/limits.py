"""What `emoengine serve` accepts: the limits, the checks that turn a hostile request into one 4xx JSON error, and
the bearer token. Everything here runs before a byte reaches the decoder or EmoNet, and none of it trusts the
client: sizes are read from headers the server parses itself, `.npy` bodies are never unpickled, and the
client only ever names data it sends (never a server path).
"""

from __future__ import annotations

import hmac
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoengine.contract import INPUT_SHAPE

IMAGE_TYPES = ("image/jpeg", "image/png")
NPY_TYPE = "application/x-npy"
VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo",
               "application/octet-stream")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")   # a results file name: no path, no dot-dot


@dataclass(frozen=True)
class Limits:
    """Per-request limits (`serve --max-…`); a request over one gets 413 (too big) or 422 (not acceptable)."""

    upload_mb: float = 32.0           # an image or a crops body
    video_upload_mb: float = 512.0    # a video body
    image_pixels: int = 40_000_000    # width × height of an uploaded image
    crops: int = 64                   # crops per /v1/crops request
    video_s: float = 2 * 3600.0       # an uploaded video's duration
    video_frames: int = 200_000       # and its frames

    @property
    def upload_bytes(self) -> int:
        return int(self.upload_mb * (1 << 20))

    @property
    def video_upload_bytes(self) -> int:
        return int(self.video_upload_mb * (1 << 20))


class ApiError(Exception):
    """An HTTP error the gateway answers as `{"error": {"status", "message"}}`; never a traceback."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_length(declared: str | None, limit: int) -> None:
    """413 before reading a body whose Content-Length says it is too big."""
    try:
        n = int(declared) if declared is not None else None
    except ValueError:
        raise ApiError(400, f"Content-Length is not a number: {declared!r}") from None
    if n is not None and n > limit:
        raise ApiError(413, f"body of {n} bytes is over the limit of {limit} bytes")


def check_body(body: bytes, limit: int) -> bytes:
    if not body:
        raise ApiError(422, "empty body")
    if len(body) > limit:
        raise ApiError(413, f"body of {len(body)} bytes is over the limit of {limit} bytes")
    return body


def parse_npy(body: bytes, limits: Limits) -> np.ndarray:
    """uint8 (N, 256, 256, 3) RGB crops from an .npy body. The header is parsed first (shape and dtype checked
    before any data is read), object arrays are refused (np.load with allow_pickle=False), and the data must be
    exactly as long as the header says."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as e:
        raise ApiError(422, f"not an .npy array: {str(e).splitlines()[0][:200]}") from None
    if dtype.hasobject:
        raise ApiError(422, "object (pickled) .npy arrays are refused; send uint8 crops")
    if dtype != np.uint8:
        raise ApiError(422, f"crops must be uint8 RGB, not {dtype}")
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or tuple(shape[1:]) != INPUT_SHAPE:
        raise ApiError(422, f"crops must have shape (N, {', '.join(map(str, INPUT_SHAPE))}), not {tuple(shape)}")
    if not 1 <= shape[0] <= limits.crops:
        code = 413 if shape[0] > limits.crops else 422
        raise ApiError(code, f"{shape[0]} crops in one request; 1 to {limits.crops} are allowed")
    header_end = stream.tell()
    expected = int(np.prod(shape))
    if len(body) - header_end != expected:
        raise ApiError(422, f".npy data is {len(body) - header_end} bytes, its header says {expected}")
    crops = np.frombuffer(body, np.uint8, count=expected, offset=header_end)
    crops = crops.reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(crops)


def check_image(body: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) of a JPEG or PNG body from its header alone (Pillow reads no pixels for this), so that a
    decompression bomb is refused before it is decoded."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None   # our own limit below, with our own error
    try:
        with Image.open(io.BytesIO(body)) as im:
            fmt, (w, h) = im.format, im.size
    except Exception as e:  # noqa: BLE001  Pillow raises many kinds on garbage
        raise ApiError(422, f"not a readable JPEG or PNG image ({type(e).__name__})") from None
    if fmt not in ("JPEG", "PNG", "MPO"):
        raise ApiError(415, f"images must be JPEG or PNG, not {fmt}")
    if w * h > limits.image_pixels:
        raise ApiError(413, f"image of {w}×{h} = {w * h} pixels is over the limit of {limits.image_pixels}")
    # OpenCV decodes a cut-off file into a half-grey image without a word: refuse it by its missing end marker
    ended = b"\xff\xd9" in body[-4096:] if fmt != "PNG" else b"IEND" in body[-256:]
    if not ended:
        raise ApiError(422, f"truncated {fmt} image (no end marker): the upload was cut off")
    return w, h


def check_file_name(name: str) -> str:
    if not SAFE_NAME.match(name) or ".." in name:
        raise ApiError(404, f"no such file: {name[:100]!r}")
    return name


def token_ok(header: str | None, token: str | None) -> bool:
    """True without a token; with one, `Authorization: Bearer <token>` compared in constant time."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def read_token(path: str | None) -> str | None:
    """The token file's first line (at least 16 characters: a guessable token guards nothing)."""
    from emoengine.errors import UserInputError

    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise UserInputError(f"cannot read token_file {path}: {e.strerror or e}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserInputError(f"token_file {path} must hold one token of 16 or more characters, no spaces")
    return token
