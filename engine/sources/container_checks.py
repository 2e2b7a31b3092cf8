"""Is a video file visibly cut short? Read off its container's own sizes (MP4/MOV, Matroska/WebM, AVI), before
any decoder sees it: a copy or download that stopped half way is refused at once.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path


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
