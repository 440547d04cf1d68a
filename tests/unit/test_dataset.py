"""camtrap.dataset: the Conser-vision contract, and a precise report of every way to break it."""

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camtrap.dataset import ImageLimits, LabelledData, load_dataset, validate_dataset
from camtrap.errors import DataError

FEATURES, LABELS = "train_features.csv", "train_labels.csv"
# Deliberately not alphabetical: the classes are the label columns in file order.
CLASSES = ["zebra", "antelope", "mole"]
# (id, class, site); "007" checks that ids stay strings (pandas would make it 7).
ROWS = [
    ("007", "zebra", "s1"),
    ("a1", "zebra", "s1"),
    ("b1", "antelope", "s2"),
    ("b2", "antelope", "s2"),
    ("c1", "mole", "s3"),
    ("c2", "mole", "s3"),
]
ENA24_CLASSES = [
    "american_black_bear",
    "american_crow",
    "chicken",
    "eastern_fox_squirrel",
    "grey_fox",
    "striped_skunk",
    "virginia_opossum",
]


def _png(colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (colour, 0, 255 - colour)).save(buffer, "PNG")
    return buffer.getvalue()


def _one_hot(label: str) -> str:
    return ",".join("1.0" if name == label else "0.0" for name in CLASSES)


def write_dataset(root: Path, rows=ROWS) -> Path:
    """A valid dataset: an 8x6 PNG per row under images/, both CSVs as the real data has them."""
    (root / "images").mkdir(parents=True)
    features = ["id,filepath,site"]
    labels = ["id," + ",".join(CLASSES)]
    for number, (image_id, label, site) in enumerate(rows):
        (root / "images" / f"{image_id}.png").write_bytes(_png(number * 40))
        features.append(f"{image_id},images/{image_id}.png,{site}")
        labels.append(f"{image_id},{_one_hot(label)}")
    write_csv(root / FEATURES, features)
    write_csv(root / LABELS, labels)
    return root


def write_csv(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def edit_csv(path: Path, line: int, text: str | None) -> None:
    """Replace 1-based `line` with `text` (None: delete it)."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    write_csv(path, lines)


def problems_of(root: Path, **kwargs):
    data, problems = validate_dataset(root, **kwargs)
    assert data is None and problems, "expected the dataset to be rejected"
    return problems


def only_problem(root: Path, **kwargs):
    problems = problems_of(root, **kwargs)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


@pytest.fixture
def root(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


# --- the happy path ------------------------------------------------------------------------


def test_valid_dataset_loads_into_one_frame(root):
    data = load_dataset(root)
    assert isinstance(data, LabelledData) and data.root == root
    assert data.classes == CLASSES
    frame = data.frame
    columns = ["id", "filepath", "path", "site", "label", "label_idx", "sha256"]
    assert list(frame.columns) == columns
    assert list(frame.index) == list(range(6))
    assert frame["id"].tolist() == ["007", "a1", "b1", "b2", "c1", "c2"]  # "007" kept
    assert frame["filepath"].iloc[0] == "images/007.png"  # as written in the CSV
    assert frame["path"].iloc[0] == str(root.resolve() / "images" / "007.png")
    assert frame["site"].tolist() == ["s1", "s1", "s2", "s2", "s3", "s3"]
    assert frame["label"].tolist() == ["zebra", "zebra", "antelope", "antelope", "mole", "mole"]
    assert frame["label_idx"].tolist() == [0, 0, 1, 1, 2, 2]  # index into CLASSES, not sorted
    assert frame["label_idx"].dtype == np.int64
    first = hashlib.sha256((root / "images" / "007.png").read_bytes()).hexdigest()
    assert frame["sha256"].iloc[0] == first  # of the file's bytes: the image cache's key


def test_integer_labels_bom_blank_lines_and_padding_are_fine(root):
    # "1"/"0" as well as "1.0"/"0.0"; spaces around values; Excel's BOM; a blank line and a
    # trailing row of empty values (what spreadsheets save).
    text = (root / LABELS).read_text().replace("1.0", " 1 ").replace("0.0", "0")
    (root / LABELS).write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\n,,,\n")
    edit_csv(root / FEATURES, 3, "\n" + (root / FEATURES).read_text().splitlines()[2])
    assert load_dataset(root).frame["label"].tolist()[0] == "zebra"


def test_any_class_names_and_count(tmp_path):
    root = write_dataset(tmp_path / "d")
    lines = (root / LABELS).read_text().splitlines()
    write_csv(root / LABELS, ["id,Cat A,dog-2,x,y,z", *[f"{ln},0,0" for ln in lines[1:]]])
    # 5 classes now: the old three plus x, y, z renamed; column order, not a fixed list
    assert load_dataset(root).classes == ["Cat A", "dog-2", "x", "y", "z"]


def test_feature_columns_in_any_order_and_extra_columns(root):
    lines = [ln.split(",") for ln in (root / FEATURES).read_text().splitlines()]
    write_csv(root / FEATURES, [f"{s},{f},x,{i}" for i, f, s in lines])  # site,filepath,x,id
    frame = load_dataset(root).frame
    assert frame["id"].tolist()[:2] == ["007", "a1"] and frame["site"].iloc[0] == "s1"
    # a broken row is named by its id column, wherever that is
    edit_csv(root / FEATURES, 3, "s1,images/a1.png,a1")  # one value short
    # the id column (4th) is absent in that row, so a1's label row is also unmatched
    found = [(p.file, p.line, p.id) for p in problems_of(root)]
    assert found == [(FEATURES, 3, None), (LABELS, 3, "a1")]
    edit_csv(root / FEATURES, 3, "s1,images/a1.png,x,a1,more")
    assert only_problem(root).id == "a1"


def test_fingerprint_follows_the_data(root):
    first = load_dataset(root).fingerprint
    assert len(first) == 64 and int(first, 16) >= 0  # sha256 hex
    assert load_dataset(root).fingerprint == first  # deterministic
    # skipping the decode still hashes every image, so the identity is the same
    assert load_dataset(root, check_images=False).fingerprint == first
    (root / "images" / "c2.png").write_bytes(_png(7))  # one image changes, CSVs do not
    assert load_dataset(root).fingerprint != first


def test_fingerprint_ignores_where_the_data_lives(root, tmp_path):
    copy = write_dataset(tmp_path / "elsewhere")
    assert load_dataset(copy).fingerprint == load_dataset(root).fingerprint


def test_custom_csv_names(root):
    (root / FEATURES).rename(root / "f.csv")
    (root / LABELS).rename(root / "l.csv")
    assert len(load_dataset(root, "f.csv", "l.csv").frame) == 6


def test_real_ena24_mini_loads_clean(ena24_root):
    data, problems = validate_dataset(ena24_root)
    assert problems == []
    assert data.classes == ENA24_CLASSES
    assert len(data.frame) == 21
    assert data.frame["id"].iloc[0] == "ENA24_08786"  # features-CSV order
    assert data.frame["label"].value_counts().to_dict() == dict.fromkeys(ENA24_CLASSES, 3)
    assert set(data.frame["site"]) == {"ENA24"}
    assert all(Path(p).is_file() for p in data.frame["path"])


# --- CSV files -----------------------------------------------------------------------------


def test_data_root_that_is_not_a_folder(tmp_path):
    problem = only_problem(tmp_path / "nowhere")
    assert problem.message == "data root is not a folder"


def test_missing_csv(root):
    (root / LABELS).unlink()
    problem = only_problem(root)
    assert (problem.file, problem.message) == (LABELS, "file does not exist")
    assert LABELS in problem.fix


def test_empty_csv(root):
    (root / FEATURES).write_text("")
    problem = only_problem(root)
    assert (problem.file, problem.message) == (FEATURES, "is empty")


def test_header_without_rows(root):
    write_csv(root / FEATURES, ["id,filepath,site"])
    problem = only_problem(root)
    assert (problem.file, problem.line) == (FEATURES, 1)
    assert problem.message == "has a header but no data rows"


def test_unparseable_csv_names_the_line(root):
    edit_csv(root / FEATURES, 3, 'a1,"images/a1.png"x,s1')  # text after a closing quote
    problem = only_problem(root)
    assert (problem.file, problem.line) == (FEATURES, 3)
    assert "cannot be parsed as CSV" in problem.message


def test_not_utf8(root):
    (root / LABELS).write_bytes("id,zèbre,b\n".encode("latin-1"))
    problem = only_problem(root)
    assert problem.file == LABELS and "not UTF-8" in problem.message


def test_row_with_wrong_number_of_values(root):
    edit_csv(root / FEATURES, 4, "b1,images/b1.png,s2,extra")
    problem = only_problem(root)  # and b1 is not then also reported missing from the features
    assert (problem.file, problem.line, problem.id) == (FEATURES, 4, "b1")
    assert problem.message == "has 4 values but the header has 3 columns"


@pytest.mark.parametrize("column", ["id", "filepath", "site"])
def test_missing_feature_column(root, column):
    lines = [ln.split(",") for ln in (root / FEATURES).read_text().splitlines()]
    drop = lines[0].index(column)
    write_csv(root / FEATURES, [",".join(v for i, v in enumerate(ln) if i != drop) for ln in lines])
    problem = only_problem(root)
    assert (problem.file, problem.line) == (FEATURES, 1)
    assert problem.message == f"required column {column!r} is missing"


def test_labels_need_an_id_column(root):
    edit_csv(root / LABELS, 1, "key," + ",".join(CLASSES))
    problem = only_problem(root)
    assert (problem.file, problem.message) == (LABELS, "required column 'id' is missing")


def test_labels_need_two_classes(root):
    write_csv(root / LABELS, ["id,zebra", *[f"{r[0]},1" for r in ROWS]])
    problem = only_problem(root)
    assert (problem.file, problem.line) == (LABELS, 1)
    assert problem.message == "needs at least 2 class columns after 'id', has 1"


def test_repeated_and_empty_column_names(root):
    edit_csv(root / LABELS, 1, "id,zebra,zebra,")
    messages = [p.message for p in problems_of(root)]
    assert messages == [
        "column 'zebra' appears twice in the header",
        "the header has an empty column name",
    ]


# --- rows ----------------------------------------------------------------------------------


def test_duplicate_id_in_features(root):
    edit_csv(root / FEATURES, 6, "b1,images/c1.png,s3")  # line 6 (c1) now repeats b1 (line 4)
    problems = problems_of(root)
    repeat = problems[0]
    assert (repeat.file, repeat.line, repeat.id) == (FEATURES, 6, "b1")
    assert repeat.message == "id 'b1' is repeated (first on line 4)"
    # and c1, no longer in the features, is reported from the labels side
    assert [(p.file, p.line, p.id) for p in problems[1:]] == [(LABELS, 6, "c1")]


def test_duplicate_id_in_labels(root):
    (root / LABELS).write_text((root / LABELS).read_text() + f"a1,{_one_hot('mole')}\n")
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (LABELS, 8, "a1")
    assert problem.message == "id 'a1' is repeated (first on line 3)"


def test_id_only_in_features(root):
    edit_csv(root / LABELS, 4, None)  # drop b1's label (line 4)
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (FEATURES, 4, "b1")
    assert problem.message == f"id 'b1' has no label row in {LABELS}"


def test_id_only_in_labels(root):
    (root / LABELS).write_text((root / LABELS).read_text() + f"ghost,{_one_hot('zebra')}\n")
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (LABELS, 8, "ghost")
    assert problem.message == f"id 'ghost' has no features row in {FEATURES}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("0.5,0.5,0", "label values must be 0 or 1, got zebra='0.5', antelope='0.5'"),
        ("2,0,0", "label values must be 0 or 1, got zebra='2'"),
        ("NaN,1,0", "label values must be 0 or 1, got zebra='NaN'"),
        (",1,0", "label values must be 0 or 1, got zebra=''"),
        ("yes,0,0", "label values must be 0 or 1, got zebra='yes'"),
        ("0.0,0.0,0.0", "no class is marked 1 (every value is 0)"),
        ("1,0,1.0", "2 classes are marked 1 (zebra, mole); exactly one must be"),
    ],
)
def test_label_row_not_one_hot(root, values, message):
    edit_csv(root / LABELS, 3, f"a1,{values}")
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (LABELS, 3, "a1")
    assert problem.message == message
    assert "exactly one" in problem.fix


def test_empty_id_filepath_and_site(root):
    edit_csv(root / FEATURES, 3, ",images/a1.png,s1")  # a1 loses its id ...
    edit_csv(root / FEATURES, 4, "b1,,s2")
    edit_csv(root / FEATURES, 5, "b2,images/b2.png,")
    found = [(p.file, p.line, p.id, p.message) for p in problems_of(root)]
    assert found == [
        (FEATURES, 3, None, "id is empty"),
        (FEATURES, 4, "b1", "filepath is empty"),
        (FEATURES, 5, "b2", "site is empty"),
        (LABELS, 3, "a1", f"id 'a1' has no features row in {FEATURES}"),  # ... so this follows
    ]


def test_line_numbers_count_blank_lines_and_quoted_newlines(root):
    lines = (root / FEATURES).read_text().splitlines()
    # line 2 is blank; line 3-4 is one record whose site has a newline inside quotes;
    # so the missing image of b1 is on line 6, not the 4th data row's "line 5".
    lines[1:3] = ["", lines[1].replace(",s1", ',"s\n1"'), lines[2]]
    lines[4] = "b1,images/missing.png,s2"
    write_csv(root / FEATURES, lines)
    problem = only_problem(root)
    assert (problem.line, problem.id) == (6, "b1")


# --- filepaths and images ------------------------------------------------------------------


def _point_b1_at(root: Path, filepath: str) -> None:
    edit_csv(root / FEATURES, 4, f"b1,{filepath},s2")


def test_missing_image(root):
    (root / "images" / "b1.png").unlink()
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (FEATURES, 4, "b1")
    assert problem.message == "image images/b1.png does not exist"
    assert problem.fix


def test_empty_image(root):
    (root / "images" / "b1.png").write_bytes(b"")
    problem = only_problem(root)
    assert problem.message == "image images/b1.png is empty (0 bytes)"


def test_image_that_is_not_an_image(root):
    (root / "images" / "b1.png").write_text("hello")
    problem = only_problem(root)
    assert problem.message.startswith("image images/b1.png is not an image Pillow can read")


def test_truncated_image(root):
    pixels = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    (root / "images" / "b1.jpg").write_bytes(buffer.getvalue()[:-300])
    _point_b1_at(root, "images/b1.jpg")
    problem = only_problem(root)
    assert (problem.line, problem.id) == (4, "b1")
    assert problem.message.startswith("image images/b1.jpg is truncated or corrupt")
    # without the decode, truncation is not looked for (the bytes are only hashed)
    assert validate_dataset(root, check_images=False)[1] == []


def test_directory_instead_of_an_image(root):
    _point_b1_at(root, "images")
    assert only_problem(root).message == "image images is a directory, not an image file"


def test_absolute_filepath(root):
    path = root / "images" / "b1.png"
    _point_b1_at(root, str(path))  # even though it is inside the root and exists
    problem = only_problem(root)
    assert (problem.line, problem.id) == (4, "b1")
    assert problem.message == f"filepath {str(path)!r} is absolute"


def test_dotdot_leaving_the_root(root):
    (root.parent / "outside.png").write_bytes(_png(3))  # exists, so only the escape is wrong
    _point_b1_at(root, "images/../../outside.png")
    problem = only_problem(root)
    assert (
        problem.message == "filepath 'images/../../outside.png' leads outside the data root ('..')"
    )


def test_dotdot_staying_inside_is_fine(root):
    _point_b1_at(root, "images/../images/b1.png")
    data = load_dataset(root)
    assert data.frame["path"].iloc[2] == str(root.resolve() / "images" / "b1.png")


def test_symlink_leaving_the_root(root):
    outside = root.parent / "secret.png"
    outside.write_bytes(_png(5))
    os.symlink(outside, root / "images" / "link.png")
    _point_b1_at(root, "images/link.png")
    problem = only_problem(root)
    assert problem.message == (
        f"filepath 'images/link.png' is a link to {outside.resolve()}, outside the data root"
    )


def test_symlink_inside_the_root_is_fine(root):
    os.symlink(root / "images" / "b1.png", root / "images" / "alias.png")
    _point_b1_at(root, "images/alias.png")
    assert load_dataset(root).frame["filepath"].iloc[2] == "images/alias.png"


# --- hostile input: image size limits, reserved class names ---------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG header declaring width x height RGB pixels, with no pixel data (never decodable)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_an_image_over_the_default_pixel_limit_is_refused_from_its_header(root):
    (root / "images" / "b1.png").write_bytes(_png_header_only(10_000, 6_000))  # 60 MP
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (FEATURES, 4, "b1")
    # Not "truncated": the header alone decided, nothing was decoded.
    assert problem.message == (
        "image images/b1.png has 60,000,000 pixels (10000 x 6000), over the limit of "
        "50,000,000 pixels: data.max_image_pixels"
    )
    assert problem.fix == (
        "downscale it to at most 50,000,000 pixels, or raise data.max_image_pixels"
    )


@pytest.mark.filterwarnings("error")  # PIL's DecompressionBombWarning must not escape either
def test_pils_bomb_warning_becomes_the_limit_problem_in_validation(root):
    (root / "images" / "b1.png").write_bytes(_png_header_only(10_000, 10_000))  # 100 MP
    problem = only_problem(root)
    assert problem.message.startswith(
        "image images/b1.png has 100,000,000 pixels (10000 x 10000), over the limit"
    )


def test_pils_own_bomb_limit_is_a_problem_even_with_a_raised_limit(root):
    (root / "images" / "b1.png").write_bytes(_png_header_only(20_000, 20_000))  # 400 MP
    problem = only_problem(root, limits=ImageLimits(max_pixels=10**9))
    assert (problem.line, problem.id) == (4, "b1")
    assert problem.message.startswith("image images/b1.png has too many pixels to decode safely")
    assert problem.fix == f"downscale it to at most {Image.MAX_IMAGE_PIXELS:,} pixels"


def test_a_file_over_the_default_size_limit_is_refused(root):
    with (root / "images" / "b1.png").open("wb") as fh:
        fh.truncate(60 * 2**20)  # sparse: 60 MB on paper, nothing on disk
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (FEATURES, 4, "b1")
    assert problem.message == (
        "image images/b1.png is too large (62,914,560 bytes, over the limit of 52,428,800 "
        "bytes: data.max_image_bytes)"
    )
    assert "data.max_image_bytes" in problem.fix
    # Also when images are not decoded: the file is still read to be hashed.
    assert [p.id for p in problems_of(root, check_images=False)] == ["b1"]


def test_limits_apply_to_every_image_and_allow_exactly_the_limit(root):
    sizes = {path.stat().st_size for path in (root / "images").iterdir()}
    # Every image is an 8x6 PNG: 48 pixels.
    assert validate_dataset(root, limits=ImageLimits(max_bytes=max(sizes), max_pixels=48))[1] == []
    problems = problems_of(root, limits=ImageLimits(max_pixels=47))
    assert [p.line for p in problems] == [2, 3, 4, 5, 6, 7]
    assert problems[0].message == (
        "image images/007.png has 48 pixels (8 x 6), over the limit of 47 pixels: "
        "data.max_image_pixels"
    )
    too_small = max(sizes) - 1
    big = problems_of(root, limits=ImageLimits(max_bytes=too_small))
    assert big and all(f"over the limit of {too_small:,} bytes" in p.message for p in big)


@pytest.mark.parametrize(
    "name", ["label", "split", "sha256", "filepath", "path", "site", "label_idx", "row"]
)
def test_a_class_named_like_a_pipeline_column_is_refused_at_validation(root, name):
    edit_csv(root / LABELS, 1, f"id,zebra,{name},mole")
    problem = only_problem(root)
    assert (problem.file, problem.line, problem.id) == (LABELS, 1, None)
    assert problem.message.startswith(
        f"class column {name!r} has a name the pipeline reserves for its own column (reserved: "
    )
    assert problem.fix == f"rename the class column {name!r} in the header (e.g. to '{name}_class')"


def test_class_names_that_only_resemble_reserved_ones_are_fine(root):
    edit_csv(root / LABELS, 1, "id,Label,label_class,mole")
    assert load_dataset(root).classes == ["Label", "label_class", "mole"]


# --- reporting -----------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(root):
    edit_csv(root / FEATURES, 2, "007,/abs/007.png,s1")  # absolute filepath
    edit_csv(root / FEATURES, 6, "c1,images/c1.png,")  # empty site
    (root / "images" / "b2.png").unlink()  # missing image (line 5 of the features)
    edit_csv(root / LABELS, 3, "a1,1,1,0")  # two classes
    edit_csv(root / LABELS, 7, "zz,0,0,1")  # c2 -> zz: c2 and zz each on one side only
    found = [(p.file, p.line, p.id, p.message.split(" (")[0]) for p in problems_of(root)]
    # features file first, then labels, each in line order
    assert found == [
        (FEATURES, 2, "007", "filepath '/abs/007.png' is absolute"),
        (FEATURES, 5, "b2", "image images/b2.png does not exist"),
        (FEATURES, 6, "c1", "site is empty"),
        (FEATURES, 7, "c2", f"id 'c2' has no label row in {LABELS}"),
        (LABELS, 3, "a1", "2 classes are marked 1"),
        (LABELS, 7, "zz", f"id 'zz' has no features row in {FEATURES}"),
    ]


def test_load_dataset_raises_them_all(root):
    (root / "images" / "a1.png").unlink()
    (root / "images" / "c1.png").unlink()
    with pytest.raises(DataError) as caught:
        load_dataset(root)
    assert [p.id for p in caught.value.problems] == ["a1", "c1"]
    text = str(caught.value)
    assert text.startswith(f"2 problems with the dataset in {root}:")
    assert f"{FEATURES}, line 3 (id a1): image images/a1.png does not exist" in text


def test_more_than_twenty_problems_are_counted_not_listed(tmp_path):
    rows = [(f"i{n:02d}", CLASSES[n % 3], "s1") for n in range(25)]
    root = write_dataset(tmp_path / "big", rows)
    for image in (root / "images").iterdir():
        image.unlink()
    with pytest.raises(DataError) as caught:
        load_dataset(root)
    assert len(caught.value.problems) == 25  # all kept ...
    text = str(caught.value)
    assert "... and 5 more" in text  # ... 20 shown
    assert "id i19" in text and "id i20" not in text


# --- files from outside the data root, and what an error quotes of a line ----------------------
def test_a_csv_outside_the_data_root_is_not_read(root, tmp_path):
    """data.labels_csv=/etc/passwd was read, and a line of it quoted in the error (the config
    refuses such names; the reader refuses them too, for callers that skip the config)."""
    secret = tmp_path / "secret.csv"
    write_csv(secret, ["id,zebra,antelope", "root:x:0:0:root:/root:/bin/bash,1,0"])
    for name in (str(secret), "../secret.csv"):
        problem = only_problem(root, labels_csv=name)
        assert (problem.file, problem.line) == (name, None)
        assert problem.message == "is outside the data root"
        assert "root:x" not in str(problem)


def test_a_csv_that_is_a_link_leading_out_of_the_data_root_is_not_read(root, tmp_path):
    write_csv(tmp_path / "secret.csv", ["id,zebra,antelope", "root:x:0:0,1,0"])
    os.symlink(tmp_path / "secret.csv", root / "linked.csv")
    problem = only_problem(root, labels_csv="linked.csv")
    assert problem.message == f"is a link to {tmp_path / 'secret.csv'}, outside the data root"


def test_a_bad_line_is_quoted_in_at_most_80_characters_redacted(root):
    long_id = "AKIAABCDEFGHIJKLMNOP-" + "x" * 300
    edit_csv(root / FEATURES, 4, f"{long_id},images/b1.png,s2,extra")
    edit_csv(root / LABELS, 3, "a1," + "9" * 200 + ",0,0")
    text = str(DataError(problems_of(root)))
    assert "AKIA" not in text and "x" * 80 not in text and "9" * 81 not in text
    assert "(id <key>-xxxx" in text and "xxx…)" in text
    for line in text.splitlines()[1:]:
        quoted = line.split("(id ")[1].split(")")[0] if "(id " in line else ""
        assert len(quoted) <= 80
