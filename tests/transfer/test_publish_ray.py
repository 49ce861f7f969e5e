"""`fxrec publish --engine ray`: the FM on Ray Data actors writes, byte for byte, what the embedded publish
writes; a cluster that cannot be joined, or a run that cannot be published, stops before anything is written."""

from __future__ import annotations

import shutil
import socket

import pytest
from typer.testing import CliRunner

from fxrec.cli import app
from fxrec.run import Run

pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, transfer_config, small_log):
    """A tiny run with its FM trained and every snapshot kept (both engines publish from the same ones)."""
    from fxrec.jobs.train import train_model

    train = transfer_config.train.model_copy(update={"snapshots": "all"})
    config = transfer_config.model_copy(update={"train": train})
    root = tmp_path_factory.mktemp("ray") / "run"
    Run(root, config).write_config()
    train_model(config.fm, config, root, small_log, quiet=True)
    return Run(root, config)


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_the_ray_publish_writes_byte_identical_parquet_to_the_embedded_publish(
    trained, tmp_path, monkeypatch
):
    """Delay 0 and 1 (a refitted autoencoder at delay 1: a fit per snapshot) through the CLI, one local
    Ray of 2 CPUs and 2 actors; every day file and publish.yaml compared byte for byte. Batches of 1,024
    events cut each day into several chunks, which the 2 actors run in any order."""
    from fxrec.jobs import publish_ray
    from fxrec.jobs.publish import publish

    monkeypatch.setattr("fxrec.jobs.publish.CHUNK", 1024)  # the embedded batches ...
    monkeypatch.setattr(
        publish_ray, "CHUNK", 1024
    )  # ... and Ray's chunks (an actor runs a chunk as one batch)

    refit = trained.config.model_copy(
        update={"publish": trained.config.publish.model_copy(update={"refit_autoencoder": True})}
    )
    refit_config = tmp_path / "refit.yaml"
    Run(tmp_path / "refit", refit).write_config().replace(refit_config)
    expected = {}
    for delay, config in ((0, trained.config), (1, refit)):
        out = publish(trained.root, config, delay=delay, fresh=True, progress=False)
        expected[delay] = _files(out)
        shutil.rmtree(out)

    runner = CliRunner()
    args = ["publish", "--engine", "ray", "--run", str(trained.root), "--actors", "2", "--fresh"]
    plain = runner.invoke(app, [*args, "--delay", "0"])
    assert plain.exit_code == 0 and "on Ray" in plain.output, plain.output
    refitted = runner.invoke(app, [*args, "--delay", "1", "--config", str(refit_config)])
    assert refitted.exit_code == 0, refitted.output

    import ray

    assert not ray.is_initialized()  # the CLI's local Ray is shut down
    for delay, files in expected.items():
        got = _files(trained.publish_dir("fm", delay))
        assert sorted(got) == sorted(files) and sum(n.endswith(".parquet") for n in files) >= 2
        for name, data in files.items():
            assert got[name] == data, f"delay {delay}: {name} differs"
        assert (trained.user_store("fm", delay)).is_dir()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "no-port-here"])
def test_a_cluster_that_cannot_be_joined_is_exit_2_and_nothing_written(trained, address):
    address = address.format(port=_closed_port())
    out = trained.publish_dir("fm", 3)
    result = CliRunner().invoke(
        app,
        [
            "publish",
            "--engine",
            "ray",
            "--run",
            str(trained.root),
            "--delay",
            "0",
            "--delay",
            "3",
            "--fresh",
            "--address",
            address,
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Ray" in result.output and "Traceback" not in result.output
    assert not out.exists() and not out.with_name(f".{out.name}.tmp").exists()


def test_a_run_that_cannot_be_published_is_exit_2_before_ray_starts(tmp_path, trained):
    import ray

    untrained = Run(tmp_path / "untrained", trained.config)
    untrained.write_config()
    result = CliRunner().invoke(app, ["publish", "--engine", "ray", "--run", str(untrained.root)])
    assert result.exit_code == 2 and "not trained" in result.output, result.output
    assert not untrained.publish_root.exists() and not ray.is_initialized()
    nowhere = CliRunner().invoke(app, ["publish", "--engine", "ray", "--run", str(tmp_path / "nothing")])
    assert nowhere.exit_code == 2, nowhere.output
    wrong = CliRunner().invoke(app, ["publish", "--engine", "spark", "--run", str(trained.root)])
    assert wrong.exit_code == 2 and "unknown engine" in wrong.output
