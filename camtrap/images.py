"""Open any image file as an 8-bit RGB PIL image, or say plainly which file is broken and why.

Every decode in camtrap goes through here, so a bad image is always a `DataError` naming the file,
never a bare PIL/OSError from deep inside a DataLoader worker. Truncated files raise: this module
relies on PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` staying False and never changes it.

Hostile input: a file over `max_bytes` is refused before more than `max_bytes + 1` of it is read,
and an image whose header declares more than `max_pixels` pixels before any pixel is decoded.
PIL's own decompression-bomb guard (a warning above `Image.MAX_IMAGE_PIXELS`, an error above
twice that) stays on underneath; its error is a DataError like any other.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camtrap.errors import DataError, Problem

# Longest side to decode at when only checking that a JPEG is intact: libjpeg's DCT scaling
# still reads every entropy-coded byte (so truncation is found) but does 1/8 of the pixel work.
CHECK_DRAFT_SIZE = (256, 256)

# Modes whose pixel values do not fit 0..255 and need scaling rather than PIL's clipping convert.
_WIDE_MODES = ("I", "F")  # "I;16", "I;16B", "I;16L", ... all start with "I"

_REPLACE = "re-export or re-download it (JPEG or PNG), or remove its row from both CSV files"

# warnings.catch_warnings swaps process-wide state: one thread at a time, and only around the
# header parse (Image.open), which is short.
_WARNINGS_LOCK = threading.Lock()


def open_rgb(
    source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode `source` (a path or the file's bytes) fully into an RGB image, EXIF-rotated.

    `name` is how errors refer to the image (default: the path, or "<bytes>"). Raises DataError
    with one Problem naming the file if it is missing, empty, not an image, truncated or corrupt,
    or (with `max_pixels`) has more pixels than that.
    """
    label = _label(source, name)
    return _decode(_read(source, label), label, draft=None, max_pixels=max_pixels)


def read_image_bytes(
    path: str | Path, name: str | None = None, max_bytes: int | None = None
) -> bytes:
    """The bytes of an image file; DataError (naming `name` or the path) if missing, unreadable,
    empty or (with `max_bytes`) larger than that, found without reading more than `max_bytes`
    + 1 bytes. Lets a caller hash a file and `check_image` the same bytes, reading it once."""
    return _read(path, _label(path, name), max_bytes)


def check_image(
    source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None
) -> Problem | None:
    """The Problem `open_rgb` would raise for `source`, or None if it decodes.

    Cheaper than `open_rgb` (JPEGs decode at reduced scale) but real: every byte of the pixel
    data is decoded, so truncation and corruption are found.
    """
    label = _label(source, name)
    try:
        _decode(_read(source, label), label, draft=CHECK_DRAFT_SIZE, max_pixels=max_pixels)
    except DataError as err:
        return err.problems[0]
    return None


def crop_pixels(width: int, height: int, crop: tuple[float, ...]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square around the box with `margin` of its longer side
    on each side, centred on the box, moved inside the image where it fits, else clipped."""
    x, y, w, h, margin = crop
    side = max(w * width, h * height) * (1 + 2 * margin)
    side = max(1.0, min(side, max(width, height)))
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    left = min(max(cx - side / 2, 0.0), max(width - side, 0.0))
    top = min(max(cy - side / 2, 0.0), max(height - side, 0.0))
    box = round(left), round(top), round(min(left + side, width)), round(min(top + side, height))
    return box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)  # at least 1 px


# EXIF: the Exif IFD, and in it when the shutter fired (and that clock's UTC offset); the main
# IFD's DateTime (when the file was written) is the fallback cameras without the IFD give.
_EXIF_IFD, _DATETIME_ORIGINAL, _OFFSET_ORIGINAL, _DATETIME = 0x8769, 0x9003, 0x9011, 0x0132


def capture_time(path: str | Path) -> str:
    """When the photo was taken, from its EXIF (ISO 8601, with the UTC offset when the camera
    wrote one), or "" when the file has none. Reads the header only."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            ifd = exif.get_ifd(_EXIF_IFD)
    except (OSError, ValueError, SyntaxError):
        return ""
    stamp = str(ifd.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME) or "").strip("\x00 ")
    if len(stamp) < 19 or stamp[4] != ":" or stamp[10] != " ":
        return ""  # not EXIF's "YYYY:MM:DD HH:MM:SS" (unset clocks write blanks or zeros)
    iso = f"{stamp[:4]}-{stamp[5:7]}-{stamp[8:10]}T{stamp[11:19]}"
    offset = str(ifd.get(_OFFSET_ORIGINAL) or "").strip("\x00 ")
    return iso + offset if len(offset) == 6 and offset[0] in "+-" else iso


def header_problem(data: bytes, name: str, max_pixels: int) -> Problem | None:
    """What the image's header alone tells is wrong, before any pixel is decoded: more than
    `max_pixels` pixels, a decompression bomb by PIL's own limit, or not an image at all (the
    same Problem `open_rgb` would raise). None if the header is fine."""
    try:
        _open(data, name, max_pixels)
    except DataError as err:
        return err.problems[0]
    return None


def _label(source: str | Path | bytes, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, bytes | bytearray) else str(source)


def _fail(label: str, message: str, fix: str = _REPLACE) -> DataError:
    return DataError(Problem(file=label, message=message, fix=fix))


def _read(source: str | Path | bytes, label: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes; a missing/unreadable/empty/too large file becomes a DataError."""
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        try:
            with Path(source).open("rb") as fh:
                # One byte past the limit tells "too large" without reading a huge file.
                data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        except OSError as err:
            raise _fail(label, *_read_failure(err)) from None
    if not data:
        raise _fail(label, "is empty (0 bytes)", _REPLACE)
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_many_bytes(source, label, max_bytes)
    return data


def _too_many_bytes(source: str | Path | bytes, label: str, max_bytes: int) -> DataError:
    """The file is over the size limit; its size is told where a stat can tell it (not for a
    device or a file that changed meanwhile)."""
    size = len(source) if isinstance(source, bytes | bytearray) else _stat_size(Path(source))
    told = f"{size:,} bytes, " if size > max_bytes else ""
    message = f"is too large ({told}over the limit of {max_bytes:,} bytes: data.max_image_bytes)"
    fix = "re-export it smaller (e.g. as JPEG), or raise data.max_image_bytes if it is genuine"
    return _fail(label, message, fix)


def _stat_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_failure(err: OSError) -> tuple[str, str]:
    """(message, fix) for a file that cannot be read."""
    if isinstance(err, FileNotFoundError):
        return "does not exist", "check the filepath (relative to the data root)"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not an image file", "point the filepath at an image file"
    if isinstance(err, PermissionError):
        return "cannot be read: permission denied", "make the file readable"
    return f"cannot be read: {err.strerror or err}", "check the disk or file system"


def _decode(
    data: bytes, label: str, draft: tuple[int, int] | None, max_pixels: int | None = None
) -> Image.Image:
    """Decode, rotate per EXIF and convert to RGB; any decoder failure becomes a DataError."""
    image = _open(data, label, max_pixels)
    try:
        if draft is not None:
            image.draft("RGB", draft)  # JPEG only; a no-op for other formats
        image.load()
        image = ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Image.DecompressionBombError as err:  # some plugins check again while loading
        raise _bomb(label, err) from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _fail(label, f"is truncated or corrupt ({type(err).__name__}: {err})") from None
    try:
        return to_rgb(image)
    except ValueError as err:  # a mode PIL has no RGB conversion for (e.g. "La")
        raise _fail(
            label, f"has pixel mode {image.mode!r}, which cannot become RGB ({err})"
        ) from None


def _open(data: bytes, label: str, max_pixels: int | None) -> Image.Image:
    """The image with only its header parsed (no pixel decoded yet), refused if it declares
    more than `max_pixels` pixels. With a limit, camtrap's check replaces PIL's warning (which
    would otherwise fire, uncaught, for an image this check refuses anyway)."""
    quiet = _no_bomb_warning() if max_pixels is not None else nullcontext()
    try:
        with quiet:
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _fail(label, "is not an image Pillow can read (unknown or damaged format)") from None
    except Image.DecompressionBombError as err:
        raise _bomb(label, err) from None
    except Exception as err:  # cut inside its header: PIL raises OSError, SyntaxError, ...
        raise _fail(label, f"is truncated or corrupt ({type(err).__name__}: {err})") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        message = (
            f"has {width * height:,} pixels ({width} x {height}), over the limit of "
            f"{max_pixels:,} pixels: data.max_image_pixels"
        )
        fix = f"downscale it to at most {max_pixels:,} pixels, or raise data.max_image_pixels"
        raise _fail(label, message, fix)
    return image


@contextmanager
def _no_bomb_warning() -> Iterator[None]:
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _bomb(label: str, err: Image.DecompressionBombError) -> DataError:
    """PIL's hard limit (twice Image.MAX_IMAGE_PIXELS), which no setting of camtrap lifts."""
    message = f"has too many pixels to decode safely ({err})"
    return _fail(label, message, f"downscale it to at most {Image.MAX_IMAGE_PIXELS:,} pixels")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    - 16-bit/int/float greyscale (I;16*, I, F) is scaled to 0..255, not clipped
      (see `_wide_to_8bit`).
    - Anything with transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is
      composited over black, so fully transparent pixels are black whatever colour they hide.
    - Everything else (1, L, P, CMYK, YCbCr, HSV, ...) uses PIL's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith(_WIDE_MODES):
        grey = _wide_to_8bit(np.asarray(image), image.mode)
        return Image.fromarray(grey).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale one channel of 16-bit, 32-bit int or float pixels to uint8.

    - I;16 (any byte order): the full 0..65535 range -> 0..255 (divide by 257, so 65535 -> 255).
    - I (32-bit int): values within 0..65535 are taken as 16-bit data (how 16-bit PNG/TIFF
      files often arrive); anything else (negative, wider) is stretched min..max -> 0..255.
    - F (float): 0..1 -> 0..255; otherwise 0..255 kept as is; otherwise stretched min..max.
    NaN becomes 0.
    """
    pixels = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        scaled = pixels / 257.0
    elif mode == "F" and low >= 0 and high <= 1.0:
        scaled = pixels * 255.0
    elif mode == "F" and low >= 0 and high <= 255.0:
        scaled = pixels
    elif high > low:
        scaled = (pixels - low) * 255.0 / (high - low)
    else:
        scaled = np.zeros_like(pixels)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
