"""configs/examples/: each spec imports a small generated file of its shape, and its config trains an
FM and its VMs on the result, from the command line, as the README tells a new user to."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from fxrec.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"
START = 1_700_006_400  # a UTC midnight
DAYS = 3


def _clicks_csv(path: Path, rng: np.random.Generator, n: int = 900) -> Path:
    ts = np.sort(START + rng.integers(0, DAYS * 86_400, n))
    item = rng.integers(0, 60, n)
    pl.DataFrame(
        {
            "user": [f"u{u}" for u in rng.integers(0, 80, n)],
            "item": [f"sku-{i}" for i in item],
            "time": pl.from_epoch(pl.Series(ts), time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S"),
            "country": rng.choice(["DE", "FR", "US"], n),
            "category": [f"c{i % 9}" for i in item],
        }
    ).write_csv(path)
    return path


def _impressions_parquet(path: Path, rng: np.random.Generator, n: int = 3000) -> Path:
    ts = np.sort(START + rng.integers(0, DAYS * 86_400, n))
    click = (rng.random(n) < 0.2).astype(np.float32)
    conversion = (click * (rng.random(n) < 0.3)).astype(np.float32)
    delay = np.where(conversion > 0, rng.exponential(86_400, n), np.nan).astype(np.float32)
    pl.DataFrame(
        {
            "ts": ts,
            "user_id": rng.integers(0, 200, n),
            "ad_id": rng.integers(0, 100, n),
            "advertiser_id": rng.integers(0, 20, n),
            "placement": rng.choice(["app", "web"], n),
            "device": rng.choice(["ios", "android", "desktop"], n),
            "click": click,
            "conversion": conversion,
            "conversion_delay_s": pl.Series(delay).fill_nan(None),
            "price": rng.random(n).astype(np.float32),
        }
    ).write_parquet(path)
    return path


def _ratings_dat(path: Path, rng: np.random.Generator, n: int = 3000) -> Path:
    ts_ms = np.sort(START + rng.integers(0, DAYS * 86_400, n)) * 1000
    rows = zip(rng.integers(1, 150, n), rng.integers(1, 90, n), rng.integers(1, 6, n), ts_ms, rng.choice(["F", "M"], n),
               rng.choice(["Drama", "Comedy", "Film-Noir"], n), strict=True)  # fmt: skip
    path.write_text("".join("::".join(map(str, row)) + "\n" for row in rows))
    return path


CASES = {"clicks_csv": _clicks_csv, "impressions_parquet": _impressions_parquet, "ratings_dat": _ratings_dat}
SUFFIX = {"clicks_csv": "csv", "impressions_parquet": "parquet", "ratings_dat": "dat"}


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(CASES))
def test_example_imports_and_trains(tmp_path, example):
    source = CASES[example](tmp_path / f"log.{SUFFIX[example]}", np.random.default_rng(0))
    events, run = tmp_path / "events", tmp_path / "run"
    runner = CliRunner()
    imported = runner.invoke(
        app, ["data", "import", "table", str(source), "--spec", str(EXAMPLES / f"{example}.spec.yaml"), "--out", str(events)]
    )
    assert imported.exit_code == 0, imported.output
    assert f"{DAYS} days" in imported.output
    config = str(EXAMPLES / f"{example}.yaml")
    for stage in (["train", "fm"], ["train", "vm"], ["eval"]):
        result = runner.invoke(app, [*stage, "--config", config, "--run", str(run), "--events", str(events)])
        assert result.exit_code == 0, result.output
    for model in ["fm", *VMS[example]]:
        assert (run / "models" / model / "model.pt").exists(), model
    assert (run / "report.json").exists() and (run / "report.html").exists()


VMS = {"clicks_csv": ["vm_web"], "impressions_parquet": ["vm_app", "vm_web"], "ratings_dat": ["vm_movies"]}


@pytest.mark.slow
def test_a_normal_run_prints_no_third_party_warnings(tmp_path):
    """Import, train and evaluate in a fresh process: nothing on stderr warns (torch.fx's tracing
    notice, pydantic, matplotlib...) — a user should see only fxrec's own output."""
    import re
    import subprocess
    import sys

    source = _ratings_dat(tmp_path / "log.dat", np.random.default_rng(0), n=1500)
    events, run = tmp_path / "events", tmp_path / "run"
    cli = [sys.executable, "-c", "from fxrec.cli import app; app()"]
    config = str(EXAMPLES / "ratings_dat.yaml")
    for argv in (
        ["data", "import", "table", str(source), "--spec", str(EXAMPLES / "ratings_dat.spec.yaml"), "--out", str(events)],
        ["train", "fm", "--config", config, "--run", str(run), "--events", str(events)],
        ["eval", "--config", config, "--run", str(run), "--events", str(events)],
    ):
        done = subprocess.run(cli + argv, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        # Python warnings say "Warning"; torch's logger prefixes its warnings with W<month><day>
        assert not re.search(r"warn|^W\d{4} ", done.stderr, re.IGNORECASE | re.MULTILINE), done.stderr[-2000:]
