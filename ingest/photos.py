"""Photos for inversion: load PNG / JPEG files or folders, check them, square them to the generator.

Reads image files; writes nothing. Every check runs before any work, so a bad input costs one line
(`PhotoError`, a `db.errors.BadInput`: the CLI exits 2) and nothing is written.

The rules (stated once, here):

- **What is read:** PNG and JPEG, recognised by content (a `.png` that is not a PNG is refused). A
  folder means its `*.png, *.jpg, *.jpeg` files (any case, not recursive), in name order.
- **Refused:** a missing path, a zero-byte file, a file that is not a PNG / JPEG image, a corrupt image,
  an image over `MAX_PIXELS` (4096 x 4096 = 16.8 M pixels, read from the header before decoding),
  a folder with no PNG / JPEG in it.
- **Converted (and said so in `Photo.notes`):** grayscale to RGB (the gray level on all three
  channels); palette to RGB; 16-bit to 8-bit (the top 8 bits); alpha composited over white.
- **Squared:** the centred square of side min(width, height) is cut (offset floor((side - min) / 2)),
  then resized to resolution x resolution with Lanczos filtering (area-averaging when shrinking).
- **Identity:** the sha256 of the file's bytes (the store keeps this hash and the path, never pixels).

    from ingest.photos import load_photos
    photos = load_photos(["photo.jpg", "folder/"], resolution=64)
    photos[0].image.shape   # (64, 64, 3) uint8
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from db.errors import BadInput

MAX_PIXELS = 4096 * 4096
SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG")


class PhotoError(BadInput):
    """A photo (or folder) that cannot be used: one line, exit status 2."""


@dataclass
class Photo:
    """One checked photo, squared to the generator's resolution."""

    path: str
    sha256: str
    image: np.ndarray            # uint8 [R, R, 3]
    width: int                   # original size
    height: int
    notes: list[str] = field(default_factory=list)  # conversions applied, e.g. "grayscale -> RGB"

    @property
    def stem(self) -> str:
        return Path(self.path).stem


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the PNG / JPEG files of folders named (name order); refuses missing paths
    and empty folders."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise PhotoError(f"{p}: no PNG or JPEG images in this folder")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise PhotoError(f"{p}: no such file or folder")
    if not out:
        raise PhotoError("no photos given")
    return out


def _to_rgb(im, notes: list[str]):  # type: ignore[no-untyped-def]
    """PIL image of any mode -> 8-bit RGB, noting each conversion."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        a = np.asarray(im, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.uint32)
        im = Image.fromarray((a >> 8).clip(0, 255).astype(np.uint8), "L")
        notes.append(f"16-bit ({mode}) -> 8-bit (top 8 bits)")
        mode = "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append("palette -> RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "RGB" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
        notes.append("alpha composited over white")
        mode = "RGBA"
    if mode in ("L", "1"):
        notes.append("grayscale -> RGB")
    elif mode not in ("RGB", "RGBA"):
        notes.append(f"{mode} -> RGB")
    return im.convert("RGB")


def square(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [R, R, 3]: the centred min(H, W) square, Lanczos-resized (the module's rule)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    im = Image.fromarray(np.ascontiguousarray(image[top:top + s, left:left + s]))
    if s != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def load_photo(path: str | Path, resolution: int) -> Photo:
    """One checked, converted, squared photo; PhotoError with one line otherwise."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    data = p.read_bytes()
    if not data:
        raise PhotoError(f"{p}: empty file (0 bytes)")
    import io

    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise PhotoError(f"{p}: not a PNG or JPEG image") from None
    if fmt not in FORMATS:
        raise PhotoError(f"{p}: a {fmt} image; only PNG and JPEG are read")
    if w * h > MAX_PIXELS:
        raise PhotoError(f"{p}: {w}x{h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,} (4096x4096); "
                         f"shrink it first")
    if w < 1 or h < 1:
        raise PhotoError(f"{p}: {w}x{h} image")
    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = np.asarray(_to_rgb(im, notes), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise PhotoError(f"{p}: corrupt {fmt} image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if (w, h) != (resolution, resolution):
        notes.append(f"{w}x{h} -> centre square {min(w, h)}x{min(w, h)} -> {resolution}x{resolution}")
    return Photo(path=str(p), sha256=hashlib.sha256(data).hexdigest(), image=square(rgb, resolution),
                 width=w, height=h, notes=notes)


def load_photos(paths: Sequence[str | Path], resolution: int) -> list[Photo]:
    """Every photo of `paths` (files and folders), all checked before any is returned."""
    return [load_photo(f, resolution) for f in expand(paths)]
