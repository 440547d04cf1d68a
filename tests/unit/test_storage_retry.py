"""What a storage failure becomes (camtrap.storage.retry): S3's refusals still point at the AWS
credentials and a lost condition race at a rerun, while the same exception types raised by the
local disk name the local path."""

import errno

from camtrap.storage import retry


def test_s3_access_denied_still_points_at_the_aws_credentials():
    # s3fs turns AccessDenied into PermissionError(message): no errno, no filename.
    error = retry._storage_error(PermissionError("Access Denied"), "read", "s3://b/k.csv")
    assert str(error).startswith("cannot read s3://b/k.csv: access denied — fix: check the AWS")
    # and InvalidBucketState into OSError(EPERM, message): a PermissionError without a filename
    error = retry._storage_error(OSError(errno.EPERM, "bad state"), "read", "s3://b/k.csv")
    assert "AWS credentials" in str(error)


def test_s3_if_none_match_412_still_says_changed_since_listed():
    error = retry._storage_error(FileExistsError("At least one of the pre-conditions"), "create",
                                 "s3://b/run.lease")  # fmt: skip
    assert "it changed since it was listed" in str(error)


def test_a_local_permission_error_under_an_s3_operation_names_the_file(tmp_path):
    source = tmp_path / "a.bin"
    err = PermissionError(errno.EACCES, "Permission denied", str(source))
    error = retry._storage_error(err, "upload to", "s3://b/a.bin")
    assert str(error) == (
        f"cannot upload to s3://b/a.bin: permission denied reading {source} — fix: check the "
        f"permissions (owner, mode) of {source} and of the folders above it"
    )
