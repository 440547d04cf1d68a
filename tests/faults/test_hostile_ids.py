"""Hostile input: run ids and S3 keys that try to leave their folder, broken datasets, and a
secret inside a URI. Each ends in one clear error (exit 2, no traceback) or is harmless; nothing
is written outside the folders a run was given, and the secret is never written or printed."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from camtrap.cli import main
from flows.train_swin import train_swin
from tasks.runs import local_run_dir

# --- run ids ------------------------------------------------------------------------------------


def _outside(before: dict[str, str], after: dict[str, str], inside: str) -> dict[str, str]:
    """Files added or changed between two `tree`s, except those under the folder `inside`."""
    changed = {k: v for k, v in after.items() if before.get(k) != v}
    return {k: v for k, v in changed.items() if not k.startswith(inside + "/")}


@pytest.mark.slow  # where the id is not refused, the run trains
@pytest.mark.parametrize("hostile", ["../../escape", "ABSOLUTE"])
def test_train_refuses_a_run_id_that_leaves_out(hostile, demo_dir, tmp_path, capsys, kit):
    sandbox = tmp_path / "sandbox"  # the tree watched: --out and what lies around it
    out = sandbox / "a" / "b" / "out"
    out.mkdir(parents=True)
    (sandbox / "marker.txt").write_text("here before")
    run_id = str(sandbox / "absolute-escape") if hostile == "ABSOLUTE" else hostile
    before = kit.tree(sandbox)

    code = main(["train", "--data", str(demo_dir), "--out", str(out), "--preset", "smoke",
                 *kit.set_args(kit.TINY), "--run-id", run_id])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and run_id in errors[0] and "fix:" in errors[0], err[-2000:]
    assert _outside(before, kit.tree(sandbox), "a/b/out") == {}


@pytest.mark.slow  # starts the session's Prefect server (and, where ../x is not refused, trains)
def test_the_flow_module_refuses_a_run_id_that_leaves_out(demo_dir, tmp_path, flow_env, kit):
    sandbox = tmp_path / "sandbox"
    out = sandbox / "out"
    out.mkdir(parents=True)
    (sandbox / "marker.txt").write_text("here before")
    before = kit.tree(sandbox)

    child = kit.start(
        kit.flow_module(str(demo_dir), str(out), "--run-id", "../x"),
        flow_env(tmp_path / "cache"), tmp_path / "flow",
    )  # fmt: skip
    code = child.wait(timeout=300)

    assert code == 2, child.tail()
    errors = [line for line in child.err().splitlines() if line.startswith("error: ")]
    # (the failed flow run's own log, above that line, holds Prefect's traceback, as for any
    # error inside a flow run; the one line for the user is this)
    assert len(errors) == 1 and "'../x'" in errors[0] and "fix:" in errors[0], child.tail()
    assert _outside(before, kit.tree(sandbox), "out") == {}
    assert not (out / "x").exists()  # not even inside --out, beside the stage folders


@pytest.mark.slow  # starts Prefect's server and trains
@pytest.mark.usefixtures("prefect_api")
def test_resuming_a_run_with_hostile_keys_writes_nothing_outside_its_local_copy(
    s3_server, demo_dir, tmp_path, cache_dir, kit
):
    bucket = s3_server.new_bucket("runs")
    output_uri = f"s3://{bucket}/runs"
    run_id = "resume-me"
    local = Path(local_run_dir(output_uri, "smoke", run_id))
    depth = len(local.relative_to(tmp_path).parts)  # so "../" * depth is tmp_path itself
    hostile = {
        "../../../ESCAPED-3": local.parents[2] / "ESCAPED-3",  # the key the issue shows
        "../" * depth + "ESCAPED-DEEP": tmp_path / "ESCAPED-DEEP",  # out of the cache too
    }
    for rel in hostile:
        s3_server.client().put_object(
            Bucket=bucket, Key=f"runs/smoke/{run_id}/{rel}", Body=b"written outside"
        )
    s3_server.client().put_object(  # a run in progress there
        Bucket=bucket, Key=f"runs/smoke/{run_id}/split.csv", Body=b"id,filepath\n"
    )

    state = train_swin(str(demo_dir), output_uri, "smoke", dict(kit.TINY), run_id,
                       return_state=True)  # fmt: skip

    escaped = sorted(str(p) for p in tmp_path.rglob("ESCAPED-*") if local not in p.parents)
    assert escaped == [], escaped
    assert not any(target.exists() for target in hostile.values())
    assert state.is_completed(), state.message  # the hostile keys are skipped, the run goes on
    kit.verify_run_uri(s3_server, state.result())


# --- broken datasets: `camtrap validate` ----------------------------------------------------------


def _row_path(root: Path, index: int) -> Path:
    """The image of features row `index` (0-based; CSV line index + 2) of the demo data."""
    return root / "train_features" / f"ZJ{index:06d}.jpg"


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    at = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _truncate(root: Path) -> None:
    path = _row_path(root, 2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 5])


def _empty(root: Path) -> None:
    _row_path(root, 5).write_bytes(b"")


def _huge_png(root: Path) -> None:
    _row_path(root, 7).write_bytes(_png_header(100_000, 100_000))  # 10^10 pixels, named .jpg


def _huge_jpeg(root: Path) -> None:
    path = _row_path(root, 9)
    path.write_bytes(_jpeg_with_size(path.read_bytes(), 65_000, 65_000))


def _duplicate_feature_id(root: Path) -> None:
    path = root / "train_features.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")  # row ZJ000000 again, on line 34


def _bom_and_duplicate_label_id(root: Path) -> None:
    path = root / "train_labels.csv"
    lines = path.read_text().splitlines()
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join([*lines, lines[3]]) + "\n").encode())


def _class_named_label(root: Path) -> None:
    path = root / "train_labels.csv"
    text = path.read_text()
    path.write_text(text.replace("bird", "label", 1))  # a class column named `label`


def _no_site_column(root: Path) -> None:
    path = root / "train_features.csv"
    lines = [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def _no_id_column(root: Path) -> None:
    path = root / "train_labels.csv"
    path.write_text(path.read_text().replace("id,", "image,", 1))


# case -> (how to break the demo data, what the report must name)
BROKEN: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "truncated-jpeg": (_truncate, ["train_features.csv, line 4", "ZJ000002.jpg"]),
    "zero-byte-file": (_empty, ["train_features.csv, line 7", "ZJ000005.jpg"]),
    "huge-png-header": (_huge_png, ["train_features.csv, line 9", "ZJ000007.jpg"]),
    "huge-jpeg-header": (_huge_jpeg, ["train_features.csv, line 11", "ZJ000009.jpg"]),
    "duplicate-id": (_duplicate_feature_id, ["train_features.csv, line 34", "ZJ000000"]),
    "bom-duplicate-id": (_bom_and_duplicate_label_id, ["train_labels.csv, line 34", "ZJ000002"]),
    "class-named-label": (_class_named_label, ["train_labels.csv, line 1", "'label'"]),
    "missing-site-column": (_no_site_column, ["train_features.csv, line 1", "'site'"]),
    "missing-id-column": (_no_id_column, ["train_labels.csv, line 1", "'id'"]),
}


@pytest.fixture
def broken_copy(demo_dir, tmp_path) -> Path:
    return Path(shutil.copytree(demo_dir, tmp_path / "data"))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_reports_a_broken_dataset_in_one_plain_report(case, broken_copy, capsys):
    breaks, named = BROKEN[case]
    breaks(broken_copy)

    code = main(["validate", "--data", str(broken_copy)])  # an exception here: a traceback

    err = capsys.readouterr().err
    assert code == 2, err
    assert all(text in err for text in named), err
    assert "fix:" in err and "Traceback" not in err


def _png_named_jpg(root: Path) -> None:
    path = _row_path(root, 4)
    buffer = io.BytesIO()
    Image.open(path).convert("P").save(buffer, format="PNG")  # a palette PNG, still named .jpg
    path.write_bytes(buffer.getvalue())


def _bom_only(root: Path) -> None:
    for name in ("train_features.csv", "train_labels.csv"):
        path = root / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Excel saves UTF-8 CSV


@pytest.mark.parametrize("breaks", [_png_named_jpg, _bom_only], ids=["png-named-jpg", "bom"])
def test_validate_accepts_what_only_looks_broken(breaks, broken_copy, capsys):
    """Images are read by content, not by name; a UTF-8 BOM is what Excel writes (README)."""
    breaks(broken_copy)
    assert main(["validate", "--data", str(broken_copy)]) == 0, capsys.readouterr().err
    assert "32 images, 8 classes, no problems" in capsys.readouterr().out


# --- a secret in a URI ----------------------------------------------------------------------------

CANARY = "CANARY5f1e0c9a7b"


@pytest.mark.usefixtures("s3_server")  # s3:// goes to moto on 127.0.0.1, nowhere else
def test_a_secret_in_the_weights_uri_is_never_written_or_printed(
    demo_dir, tmp_path, cache_dir, capfd, kit
):
    out = tmp_path / "out"
    weights = f"s3://bucket/w.pth?X-Amz-Signature={CANARY}&X-Amz-Credential=AKIA{CANARY}"

    config = {**kit.TINY, "train.epochs": 1, "model.weights": weights}
    code = main(["train", "--data", str(demo_dir), "--out", str(out), "--preset", "smoke",
                 *kit.set_args(config)])  # fmt: skip

    printed = capfd.readouterr()  # file descriptors: what any library prints is caught too
    assert code == 2, printed.err[-3000:]  # the weights cannot be loaded: fine
    assert "s3://bucket/w.pth" in printed.err  # the error names the file, not its signature
    assert CANARY not in printed.out and CANARY not in printed.err
    written = [p for p in out.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert written == []
