"""Up-front checks of a data set on disk: every file opened once, before anything is trained or written.

Cheap by design: Pillow reads the header (size) and ``verify()`` walks the file's structure (PNG
chunks and their checksums) without decoding pixels; a JPEG must also end with its end-of-image
marker, which a truncated download lacks. A bad file is an AblateInputError naming the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ablate.errors import AblateInputError
from ablate.subjects.aaclip.data.folders import Sample


def _open_size(path: str, field: str, what: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise AblateInputError(field, f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            size = im.size
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, Path(path).stat().st_size - 1024))  # a few files carry bytes after it
                if b"\xff\xd9" not in f.read():
                    raise OSError("truncated (no end-of-image marker)")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AblateInputError(field, f"{what} unreadable or truncated: {path} ({reason})") from None
    return size


def validate_samples(samples: Sequence[Sample], field: str) -> None:
    """Open every image and mask once; refuse a missing, unreadable or truncated file, an anomalous
    image without a mask, and a mask whose size differs from its image."""
    for s in samples:
        size = _open_size(s.image, field, "image")
        if s.mask is None:
            if s.label == 1:
                raise AblateInputError(field, f"anomalous image has no mask: {s.image}")
            continue
        msize = _open_size(s.mask, field, "mask")
        if msize != size:
            raise AblateInputError(
                field, f"mask {s.mask} is {msize[0]}x{msize[1]} but its image {s.image} is {size[0]}x{size[1]}"
            )
