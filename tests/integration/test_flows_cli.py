"""flows/cli.py, the console script's workflow side: `camtrap demo` and the Prefect UI line of
the summary. (The library's commands: tests/unit/test_cli.py; demo with Prefect: tests/e2e.)"""

import pytest


def test_summary_of_a_flow_run_says_how_to_open_the_prefect_ui():
    from flows.cli import prefect_ui_lines

    lines = prefect_ui_lines(".venv/bin/prefect", None, "smoke-0123456789ab")
    assert lines[-2:] == [
        "In the Prefect UI: run `.venv/bin/prefect server start`, then open http://127.0.0.1:4200",
        "  (flow run smoke-0123456789ab, kept in PREFECT_HOME's database: ~/.prefect unless set)",
    ]


def test_a_run_on_a_configured_server_points_at_that_server():
    from flows.cli import prefect_ui_lines

    lines = prefect_ui_lines("prefect", "http://gpu-box:4200/api", "smoke-0123456789ab")
    url = "http://gpu-box:4200"
    expected = f"In the Prefect UI: open {url} (PREFECT_API_URL), flow run smoke-0123456789ab"
    assert lines[-1] == expected


@pytest.mark.slow
def test_demo_without_prefect_ends_with_the_run_summary(tmp_path, capsys):
    from flows.cli import main

    tiny = ["data.image_size=32", "data.num_workers=0", "train.batch_size=8",
            "train.progress=false", "train.epochs=1"]  # fmt: skip
    code = main(["demo", "--dir", str(tmp_path / "demo"), "--per-class", "4", "--no-prefect",
                 *[arg for s in tiny for arg in ("--set", s)]])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    runs = (tmp_path / "demo" / "runs" / "smoke").iterdir()
    run_dir = next(p for p in runs if p.is_dir() and p.name[0] != ".")  # not .leases
    assert lines[0] == f"Run folder: {run_dir}"
    assert lines[1].startswith("Best epoch 1 of 1: val accuracy ")
    assert not any("Prefect" in line for line in lines)  # no Prefect run to look at
