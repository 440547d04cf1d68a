"""camtrap.images: every PIL mode becomes the right 8-bit RGB, and every broken file a DataError."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from camtrap.errors import DataError
from camtrap.images import (
    capture_time,
    check_image,
    header_problem,
    open_rgb,
    read_image_bytes,
    to_rgb,
)

# Conversions must not lean on PIL warnings (e.g. "Palette images with Transparency expressed in
# bytes should be converted to RGBA images"): those mean a mode was handled the wrong way.
pytestmark = pytest.mark.filterwarnings("error")

SIZE_02480 = (1920, 1080)  # from the ena24_mini README: 1920x1080, no EXIF orientation


def _save(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def _row(image: Image.Image) -> list[tuple[int, int, int]]:
    """The first row of pixels."""
    return [image.getpixel((x, 0)) for x in range(image.width)]


def _wide(mode: str, values: list[float]) -> Image.Image:
    """A 1-row image of `mode` holding `values` exactly."""
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode]
    raw = np.asarray([values], dtype=dtype).tobytes()
    return Image.frombytes(mode, (len(values), 1), raw)


def _noise_jpeg(width: int = 64, height: int = 48, **save_args) -> bytes:
    # Noise compresses badly, so most of the file is scan data and truncation cuts pixels.
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **save_args)
    return buffer.getvalue()


# --- modes ---------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly(tmp_path):
    path = tmp_path / "rgb.png"
    Image.frombytes("RGB", (2, 1), bytes([10, 20, 30, 200, 100, 0])).save(path)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (2, 1)
    assert _row(image) == [(10, 20, 30), (200, 100, 0)]


def test_image_is_fully_loaded_so_the_file_can_go(tmp_path):
    path = tmp_path / "gone.png"
    Image.new("RGB", (8, 6), (1, 2, 3)).save(path)
    image = open_rgb(path)
    path.unlink()  # a lazily loaded image would fail on the next line
    assert image.getpixel((7, 5)) == (1, 2, 3)


def test_greyscale_and_one_bit_repeat_the_value_on_each_channel():
    grey = Image.frombytes("L", (2, 1), bytes([0, 100]))
    assert _row(open_rgb(_save(grey, "PNG"))) == [(0, 0, 0), (100, 100, 100)]
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    # mode 1: a set bit is white (255), a clear one black
    assert _row(open_rgb(_save(bits, "PNG"))) == [(0, 0, 0), (255, 255, 255)]


def test_rgba_is_composited_over_black():
    rgba = Image.frombytes(
        "RGBA", (3, 1), bytes([10, 20, 30, 255, 10, 20, 30, 0, 200, 100, 50, 128])
    )
    # opaque: unchanged; fully transparent: black whatever colour it hides;
    # alpha 128: 200*128/255 = 100.4 -> 100, 100*128/255 = 50.2 -> 50, 50*128/255 = 25.1 -> 25
    assert _row(open_rgb(_save(rgba, "PNG"))) == [(10, 20, 30), (0, 0, 0), (100, 50, 25)]


def test_greyscale_with_alpha():
    la = Image.frombytes("LA", (2, 1), bytes([200, 255, 200, 0]))
    # opaque grey 200 stays 200; transparent grey 200 becomes black
    assert _row(open_rgb(_save(la, "PNG"))) == [(200, 200, 200), (0, 0, 0)]


def test_palette_image_uses_its_palette():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, index 1 blue
    palette.putpixel((1, 0), 1)
    assert _row(open_rgb(_save(palette, "PNG"))) == [(255, 0, 0), (0, 0, 255)]


def test_palette_image_with_a_transparent_index():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])  # index 0 red, index 1 green
    palette.putpixel((1, 0), 1)
    data = _save(palette, "PNG", transparency=1)  # index 1 is fully transparent (PNG tRNS)
    assert Image.open(io.BytesIO(data)).info["transparency"] == 1  # the file really has it
    # red stays red; the transparent green pixel becomes black (composited, not "green")
    assert _row(open_rgb(data)) == [(255, 0, 0), (0, 0, 0)]


def test_cmyk_converts_by_subtraction(tmp_path):
    path = tmp_path / "cmyk.tif"  # TIFF keeps CMYK losslessly
    Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255])).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
    # no ink -> white; full cyan -> (0, 255, 255); full black ink -> black
    assert _row(open_rgb(path)) == [(255, 255, 255), (0, 255, 255), (0, 0, 0)]


def test_ycbcr_neutral_chroma_is_grey():
    # Cb = Cr = 128 is zero chroma, so the colour is the luma: Y 128 -> (128, 128, 128)
    image = Image.new("YCbCr", (1, 1), (128, 128, 128))
    assert to_rgb(image).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF")])
def test_sixteen_bit_uses_the_full_range(mode, fmt):
    data = _save(_wide(mode, [0, 257, 32896, 65535]), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really is 16-bit
    # divide by 257: 0 -> 0, 257 -> 1, 32896 -> 128, 65535 -> 255 (PIL's convert would clip
    # everything above 255 to white)
    assert [p[0] for p in _row(open_rgb(data))] == [0, 1, 128, 255]


def test_int32_within_sixteen_bits_is_taken_as_sixteen_bit():
    data = _save(_wide("I", [0, 257, 65535]), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    # 0..65535 is 16-bit data: 257 -> 1, 65535 -> 255
    assert [p[0] for p in _row(open_rgb(data))] == [0, 1, 255]


def test_int32_outside_sixteen_bits_is_stretched():
    # -100..100 is stretched to 0..255: 0 sits in the middle, 127.5 -> 128 (round half to even)
    assert [p[0] for p in _row(to_rgb(_wide("I", [-100, 0, 100])))] == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1 -> *255: 0.5 -> 127.5 -> 128
        ([0.0, 100.4, 255.0], [0, 100, 255]),  # 0..255 kept (rounded)
        ([-1.0, 0.0, 3.0], [0, 64, 255]),  # stretched: (0 + 1) * 255 / 4 = 63.75 -> 64
        ([float("nan"), 1.0, 0.5], [0, 255, 128]),  # NaN -> 0, then 0..1 -> *255
    ],
)
def test_float_images(values, expected):
    data = _save(_wide("F", values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert [p[0] for p in _row(open_rgb(data))] == expected


def test_exif_orientation_is_applied(tmp_path):
    # Stored 16x8: left half red, right half blue; Orientation 6 = "rotate 90 degrees clockwise
    # to display", so the displayed image is 8x16 with red on top and blue at the bottom.
    stored = Image.new("RGB", (16, 8), (255, 0, 0))
    stored.paste((0, 0, 255), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif, quality=95)
    image = open_rgb(path)
    assert image.size == (8, 16)
    top, bottom = image.getpixel((4, 3)), image.getpixel((4, 12))
    assert top[0] > 200 and top[2] < 60  # red (JPEG: approximately)
    assert bottom[2] > 200 and bottom[0] < 60  # blue


# --- failures ------------------------------------------------------------------------------


def _problem(source, name=None):
    with pytest.raises(DataError) as caught:
        open_rgb(source, name)
    assert len(caught.value.problems) == 1
    return caught.value.problems[0]


def test_missing_file(tmp_path):
    problem = _problem(tmp_path / "nope.jpg")
    assert problem.file == str(tmp_path / "nope.jpg")
    assert problem.message == "does not exist" and problem.fix


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    problem = _problem(path)
    assert problem.file == str(path) and problem.message == "is empty (0 bytes)"


def test_directory(tmp_path):
    assert "is a directory" in _problem(tmp_path).message


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("id,filepath\n")
    problem = _problem(path)
    assert problem.file == str(path)
    assert "not an image" in problem.message


def test_truncated_jpeg_raises_and_flag_stays_off(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing camtrap must not flip it
    data = _noise_jpeg()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    problem = _problem(path)
    assert problem.file == str(path)
    assert "truncated or corrupt" in problem.message and "truncated" in problem.message


def test_a_jpeg_cut_inside_its_header_is_a_problem_not_an_oserror():
    data = _noise_jpeg()
    problem = _problem(data[:300], name="cut.jpg")  # Image.open itself fails here
    assert problem.file == "cut.jpg" and "truncated or corrupt" in problem.message


def test_truncated_png_raises():
    data = _save(Image.new("RGB", (64, 48), (9, 9, 9)), "PNG")
    problem = _problem(data[: len(data) - 30], name="cut.png")
    assert problem.file == "cut.png"  # bytes are named by `name`
    assert "truncated or corrupt" in problem.message


def test_bytes_without_a_name_are_called_bytes():
    assert _problem(b"not an image").file == "<bytes>"


def test_read_image_bytes(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"\x01\x02")
    assert read_image_bytes(path) == b"\x01\x02"
    with pytest.raises(DataError, match="does not exist"):
        read_image_bytes(tmp_path / "b.bin", name="b.bin")


# --- check_image ---------------------------------------------------------------------------


def test_check_image_passes_good_images_of_any_size():
    assert check_image(_noise_jpeg(640, 480)) is None  # decoded at reduced scale
    assert check_image(_save(Image.new("LA", (8, 6)), "PNG")) is None


def test_check_image_finds_truncation_even_at_reduced_scale():
    data = _noise_jpeg(640, 480)
    # Cut late: only the last rows of the scan are missing. The reduced-scale decode must
    # still read the whole scan to notice.
    problem = check_image(data[: int(len(data) * 0.95)], name="big.jpg")
    assert problem is not None and problem.file == "big.jpg"
    assert "truncated" in problem.message


def test_check_image_reports_what_open_rgb_raises(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert check_image(path) == _problem(path)
    assert check_image(tmp_path / "missing.png").message == "does not exist"


def test_check_image_on_a_real_camera_trap_jpeg(ena24_root: Path):
    path = ena24_root / "train_features" / "ENA24_02480.jpg"
    assert check_image(path) is None
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == SIZE_02480


# --- size limits (hostile input) -----------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels but which holds no pixel data: PIL
    opens it (the header is all Image.open reads) and fails on any decode, so a Problem about
    its size proves that nothing was decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_on_the_header_before_any_decode():
    data = _png_header_only(10_000, 6_000)
    problem = _problem_with(lambda: open_rgb(data, "big.png", max_pixels=50_000_000))
    assert problem.file == "big.png"
    assert problem.message == (
        "has 60,000,000 pixels (10000 x 6000), over the limit of 50,000,000 pixels: "
        "data.max_image_pixels"
    )
    assert problem.fix == (
        "downscale it to at most 50,000,000 pixels, or raise data.max_image_pixels"
    )
    assert header_problem(data, "big.png", 50_000_000) == problem
    assert check_image(data, "big.png", max_pixels=50_000_000) == problem
    # Without the limit the same bytes get as far as the decode, which fails: no pixel data.
    assert "truncated or corrupt" in _problem(data, "big.png").message


def test_pixel_limit_counts_width_times_height_and_allows_exactly_the_limit():
    data = _save(Image.new("RGB", (8, 6), (1, 2, 3)), "PNG")  # 48 pixels
    assert open_rgb(data, max_pixels=48).size == (8, 6)
    assert check_image(data, max_pixels=48) is None
    assert header_problem(data, "x.png", 48) is None
    problem = header_problem(data, "x.png", 47)
    assert problem is not None and problem.message.startswith(
        "has 48 pixels (8 x 6), over the limit of 47 pixels"
    )


def test_pils_bomb_warning_never_escapes_and_the_configured_limit_decides():
    # 100 MP is past PIL's warning threshold (Image.MAX_IMAGE_PIXELS, 89,478,485) but not its
    # error (twice that). This module turns warnings into errors: any escaping warning fails.
    data = _png_header_only(10_000, 10_000)
    problem = header_problem(data, "huge.png", 50_000_000)
    assert problem is not None
    assert problem.message.startswith("has 100,000,000 pixels (10000 x 10000), over the limit")
    assert header_problem(data, "huge.png", 150_000_000) is None  # a raised limit is honoured


def test_pils_own_decompression_bomb_limit_is_a_problem_naming_the_fix():
    data = _png_header_only(20_000, 20_000)  # 400 MP: PIL refuses it whatever camtrap allows
    problem = header_problem(data, "bomb.png", 10**9)
    assert problem is not None and problem.file == "bomb.png"
    assert problem.message.startswith("has too many pixels to decode safely (")
    assert problem.fix == f"downscale it to at most {Image.MAX_IMAGE_PIXELS:,} pixels"
    assert _problem(data, "bomb.png") == problem  # open_rgb, no camtrap limit: PIL's still holds


def test_file_size_limit_allows_exactly_the_limit(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 1234)
    assert len(read_image_bytes(path, max_bytes=1234)) == 1234
    problem = _problem_with(lambda: read_image_bytes(path, "a.jpg", max_bytes=1233))
    assert problem.file == "a.jpg"
    assert problem.message == (
        "is too large (1,234 bytes, over the limit of 1,233 bytes: data.max_image_bytes)"
    )
    assert "data.max_image_bytes" in problem.fix


def _problem_with(call):
    with pytest.raises(DataError) as caught:
        call()
    assert len(caught.value.problems) == 1
    return caught.value.problems[0]


def _jpeg_with_exif(path: Path, main: dict, exif_ifd: dict) -> Path:
    exif = Image.Exif()
    exif.update(main)
    if exif_ifd:
        exif.get_ifd(0x8769).update(exif_ifd)
    Image.new("RGB", (8, 8)).save(path, exif=exif.tobytes())
    return path


def test_capture_time_from_exif(tmp_path, ena24_root):
    # what a Reconyx wrote (ena24_mini): DateTimeOriginal, no offset
    assert capture_time(ena24_root / "train_features" / "ENA24_00049.jpg") == "2016-03-24T10:30:12"
    with_offset = _jpeg_with_exif(tmp_path / "a.jpg", {0x0132: "2024:05:01 09:00:00"},
                                  {0x9003: "2024:05:01 10:00:05", 0x9011: "+02:00"})  # fmt: skip
    assert capture_time(with_offset) == "2024-05-01T10:00:05+02:00"  # shutter time, not DateTime
    only_datetime = _jpeg_with_exif(tmp_path / "b.jpg", {0x0132: "2024:05:01 09:00:00"}, {})
    assert capture_time(only_datetime) == "2024-05-01T09:00:00"
    unset = _jpeg_with_exif(tmp_path / "c.jpg", {}, {0x9003: "    :  :     :  :  "})
    assert capture_time(unset) == ""
    assert capture_time(tmp_path / "missing.jpg") == ""


def test_crop_pixels_squares_the_box_with_its_margin_inside_the_image():
    from camtrap.images import crop_pixels

    # 960x540, box 96x54 px at (480, 270): longer side 96, +15% each side: 124.8 px square
    # centred on (528, 297)
    assert crop_pixels(960, 540, (0.5, 0.5, 0.1, 0.1, 0.15)) == (466, 235, 590, 359)
    # at the left edge: moved inside rather than cut
    assert crop_pixels(960, 540, (0.0, 0.4, 0.05, 0.1, 0.0)) == (0, 216, 54, 270)
    # larger than the image's short side: as tall as the image, clipped
    assert crop_pixels(960, 540, (0.1, 0.0, 0.8, 1.0, 0.5)) == (0, 0, 960, 540)
