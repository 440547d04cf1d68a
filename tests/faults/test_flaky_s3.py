"""The whole flow with every S3 request of this process going through a proxy that answers 503
SlowDown, resets the connection or replies slowly at random (seeded): the run completes, its
outputs in S3 are exactly those run.json lists, and it computed the numbers of a run on a healthy
S3. And a lasting fault on one object costs a bounded number of requests."""

from __future__ import annotations

import pandas as pd
import pytest
from s3_proxy import FaultRates

from camtrap import storage
from camtrap.errors import StorageError
from camtrap.storage import retry
from flows.train_swin import train_swin

# Modest rates: about 3 requests in 10 meet a fault.
RATES = FaultRates(slow_down=0.1, reset=0.1, slow=0.1, slow_seconds=0.2)
# Requests to one object key in a whole run, faults and retries included. The busiest keys are
# read or written a few times per task (run.json, split.csv, the state after each epoch); a retry
# storm (retry layers multiplying: botocore x s3fs x camtrap x Prefect) goes far above this.
MAX_REQUESTS_PER_KEY = 40


@pytest.mark.slow  # starts Prefect's server and trains
@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("seed", [0])
def test_the_flow_completes_through_flaky_s3_and_every_output_matches_run_json(
    seed, s3_server, demo_dir, cache_dir, faulty_s3, flow_reference, kit, monkeypatch
):
    data_uri = s3_server.upload_tree(demo_dir, s3_server.new_bucket("data"), "train")
    output_uri = f"s3://{s3_server.new_bucket('runs')}/runs"
    # Retries wait from 50 ms, not 500: the faults and the retries are the subject here, not
    # the waits (10 of the test's 40 s).
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", 0.05)
    proxy = faulty_s3(seed, RATES)

    state = train_swin(data_uri, output_uri, "smoke", dict(kit.TINY), return_state=True)

    assert state.is_completed(), state.message
    faults = proxy.faults()
    assert min(faults["503"], faults["reset"], faults["slow"]) >= 3, faults  # they did happen
    run_uri = state.result()
    info = kit.verify_run_uri(s3_server, run_uri)  # read straight from S3, not via the proxy
    assert {"state/last.pt", "predictions/val.csv", "metrics/epochs.csv"} <= set(info["files"])
    # the data and config of the reference run on a healthy S3: the same run, the same numbers
    assert run_uri.rsplit("/", 1)[1] == flow_reference.location.rsplit("/", 1)[1]
    epochs = kit.s3_epochs_csv(s3_server, run_uri)
    pd.testing.assert_frame_equal(epochs, flow_reference.epochs, check_exact=True)
    busiest = proxy.per_key().most_common(3)
    assert busiest[0][1] <= MAX_REQUESTS_PER_KEY, busiest


def _read(uri: str, tmp_path) -> None:
    storage.read_bytes(uri)


def _upload(uri: str, tmp_path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"payload")
    storage.upload_file(path, uri)


@pytest.mark.parametrize("call", [_read, _upload], ids=["read", "upload"])
def test_lasting_connection_resets_cost_a_bounded_number_of_requests(
    call, s3_server, faulty_s3, tmp_path, monkeypatch
):
    """Every request for one object is answered by a dropped connection. With a retry budget of
    2 s, camtrap tries at 0 s, after 0.5-0.75 s and, jitter permitting, after 1.5-2 s: 2 or 3
    tries, each 1 request, or 2 where aiohttp sends it once more on a new connection after a
    kept-alive one dropped it: at most 6 requests (retry layers stacked under camtrap's would
    multiply that), then a StorageError that names the URI and not the endpoint."""
    bucket = s3_server.new_bucket("lasting")
    key = "data/x.bin"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"payload")
    monkeypatch.setenv("CAMTRAP_S3_RETRY_SECONDS", "2")
    proxy = faulty_s3(0, FaultRates(reset=1.0), only=lambda k: k == f"{bucket}/{key}")

    with pytest.raises(StorageError) as info:
        call(f"s3://{bucket}/{key}", tmp_path)

    assert 2 <= proxy.per_key()[f"{bucket}/{key}"] <= 6, proxy.per_key()
    message = str(info.value)
    assert f"s3://{bucket}/{key}" in message and "fix:" in message
    assert proxy.endpoint not in message and s3_server.endpoint not in message
