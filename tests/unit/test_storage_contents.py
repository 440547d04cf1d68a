"""A folder's files by content (camtrap.storage.contents): which folders lie inside a data
folder, and an index that can't be trusted costs a re-read, never a wrong digest."""

import hashlib
import json

from camtrap.storage import contents


def test_inner_name_is_the_folder_relative_to_the_data_folder(tmp_path):
    data = tmp_path / "data"
    assert contents.inner_name(str(data), str(data / "runs")) == "runs"
    assert contents.inner_name(str(data), str(data)) == ""
    assert contents.inner_name(str(data), str(tmp_path / "runs")) is None
    assert contents.inner_name(str(data), "s3://b/data/runs") is None
    assert contents.inner_name("s3://b/data", "s3://b/data/runs/") == "runs"
    assert contents.inner_name("s3://b/data", "s3://b/database") is None
    assert contents.inner_name("s3://b", "s3://b/runs") == "runs"


def test_an_index_that_cant_be_trusted_is_rebuilt_from_the_bytes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_bytes(b"id\n1\n")
    index = tmp_path / "index.json"
    for text in ["{not json", "[]", '{"version": 99, "files": {}}',
                 json.dumps({"version": 1, "files": {"a.csv": [0, 5, 0, "f" * 64]}})]:  # fmt: skip
        index.write_text(text)
        listing = contents.content_listing(str(data), str(index))
        assert listing["a.csv"].etag == hashlib.sha256(b"id\n1\n").hexdigest()
