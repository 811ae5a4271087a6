"""Cohort scans on a Dask cluster: the same outputs as the serial loop, bit for bit, with a
broken slide, with a worker killed mid-slide, and on a rerun; the in-process path imports no
Dask. One 2-worker ``LocalCluster``-like cluster of processes (``--cluster local:2``) serves
the module."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from wsi_saliency.cli import app
from wsi_saliency.errors import InputError, WsiSaliencyError
from wsi_saliency.scan import distributed as dist

pytest.importorskip("distributed", reason="the 'dask' extra is not installed")

MPP = 0.486  # 2 level-0 px per model px, as in test_scan.py
runner = CliRunner()


def _blocked_dask_modules():
    return {name: sys.modules.get(name) for name in ("dask", "distributed")}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Four slides: three small synthetic ones with different lesions and, third, a broken one."""
    from conftest import write_cohort_slides

    folder = tmp_path_factory.mktemp("dask_slides")
    paths = write_cohort_slides(folder, MPP)
    broken = folder / "broken.tif"
    broken.write_bytes(b"II*\0 this is not a slide")
    return [paths[0], paths[1], broken.resolve(), paths[2]]


def _scan_args(slides, model, out, *extra):
    return ["scan", *map(str, slides), "--model", str(model), "-o", str(out), "-q", *extra]


@pytest.fixture(scope="module")
def serial(slides, tiny_model, tmp_path_factory):
    """The serial run through the CLI, with Dask made unimportable (``sys.modules`` entries
    of None): ``(out, result, dask modules imported by the run)``."""
    out = tmp_path_factory.mktemp("serial") / "out"
    before = set(sys.modules)
    saved = _blocked_dask_modules()
    sys.modules.update(dask=None, distributed=None)  # any `import dask` now fails
    try:
        result = runner.invoke(app, _scan_args(slides, tiny_model, out))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    imported = sorted(
        m for m in set(sys.modules) - before if m.split(".")[0] in ("dask", "distributed")
    )
    return out, result, imported


@pytest.fixture(scope="module")
def client(serial):
    """``--cluster local:2``: two worker processes (started after the serial run, so that the
    serial run is the first to import anything)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # helpers run on the workers
    with dist.cluster_client("local:2", log=lambda m: None) as c:
        yield c


def _datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}


def _assert_same_outputs(out: Path, reference: Path, slides) -> None:
    for slide in slides:
        if slide.stem == "broken":
            assert not (out / "broken").exists()
            continue
        ours, theirs = (
            _datasets(out / slide.stem / "scan.h5"),
            _datasets(reference / slide.stem / "scan.h5"),
        )
        assert sorted(ours) == sorted(theirs)
        for key, value in theirs.items():
            assert ours[key].dtype == value.dtype, key
            assert ours[key].tobytes() == value.tobytes(), f"{slide.stem}/scan.h5 {key}"
    assert not [p.name for p in out.iterdir() if "partial" in p.name]  # nothing half-written


def _csv_without_seconds(path: Path) -> list[list[str]]:
    import csv

    rows = list(csv.reader(path.open()))
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1 :] for r in rows]


def test_serial_scan_imports_no_dask(serial):
    out, result, imported = serial
    assert result.exit_code == 1, result.output  # the broken slide
    assert "3 scanned, 0 skipped (complete), 1 failed" in result.output
    assert imported == []


def test_cluster_cohort_matches_the_serial_run_bit_for_bit(
    serial, slides, tiny_model, client, tmp_path
):
    reference, _, _ = serial
    out = tmp_path / "out"
    address = client.scheduler.address
    result = runner.invoke(app, _scan_args(slides, tiny_model, out, "--scheduler", address))
    assert result.exit_code == 1, result.output
    assert "3 scanned, 0 skipped (complete), 1 failed" in result.output
    assert "error: not a supported slide format:" in result.output and "broken.tif" in result.output
    assert "Traceback" not in result.output
    _assert_same_outputs(out, reference, slides)
    assert _csv_without_seconds(out / "cohort.csv") == _csv_without_seconds(
        reference / "cohort.csv"
    )
    loads = client.run(lambda: __import__("wsi_saliency.scan.distributed").scan.distributed.LOADS)
    assert sorted(loads.values()) in ([0, 1], [1, 1])  # the model file once per worker

    # A rerun skips every complete slide (and tries the broken one again).
    mtimes = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "cohort.csv"
    }
    again = runner.invoke(app, _scan_args(slides, tiny_model, out, "--scheduler", address))
    assert again.exit_code == 1, again.output
    assert "0 scanned, 3 skipped (complete), 1 failed" in again.output
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert _csv_without_seconds(out / "cohort.csv") == _csv_without_seconds(
        reference / "cohort.csv"
    )


def _pause_after_scan_h5(flag: str, marker: str) -> None:
    """(On each worker.) After a slide's ``scan.h5`` is written into its partial folder, the
    first worker to get there while ``flag`` exists writes its PID to ``marker`` and waits for
    ``flag`` to go: the test kills it there, with the slide half-written."""
    import wsi_saliency.outputs.h5 as h5

    real = getattr(h5, "_unpaused_write_scan_h5", h5.write_scan_h5)
    h5._unpaused_write_scan_h5 = real

    def write_scan_h5(path, *args, **kwargs):
        written = real(path, *args, **kwargs)
        if os.path.exists(flag):
            try:
                fd = os.open(marker + ".tmp", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return written
            os.write(fd, f"{os.getpid()} {path}".encode())
            os.close(fd)
            os.replace(marker + ".tmp", marker)
            deadline = time.monotonic() + 120
            while os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.05)
        return written

    h5.write_scan_h5 = write_scan_h5


def _unpause() -> None:
    import wsi_saliency.outputs.h5 as h5

    h5.write_scan_h5 = getattr(h5, "_unpaused_write_scan_h5", h5.write_scan_h5)


def test_a_worker_killed_mid_slide_loses_nothing(serial, slides, tiny_model, client, tmp_path):
    from wsi_saliency.config import ScanConfig

    reference, _, _ = serial
    out = tmp_path / "out"
    out.mkdir()
    flag, marker = tmp_path / "pause", tmp_path / "paused"
    flag.touch()
    pids = client.run(os.getpid)
    client.run(_pause_after_scan_h5, str(flag), str(marker))
    seen: dict = {}

    def kill_when_paused() -> None:
        deadline = time.monotonic() + 180
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            pid, h5_path = marker.read_text().split(" ", 1)
            partial = Path(h5_path).parent
            seen.update(pid=int(pid), partial=partial, files=sorted(os.listdir(partial)))
            os.kill(int(pid), signal.SIGKILL)
        flag.unlink()

    killer = threading.Thread(target=kill_when_paused, daemon=True)
    killer.start()
    try:
        rows = dist.scan_cohort_distributed(
            slides, tiny_model, out, ScanConfig(), client, progress=False, log=lambda m: None
        )
    finally:
        killer.join(timeout=200)
        flag.unlink(missing_ok=True)
        client.run(_unpause)
    assert seen["pid"] in pids.values()  # a worker process, killed with its slide half-written
    assert seen["partial"].name.startswith(".") and ".partial-" in seen["partial"].name
    assert seen["files"] == ["scan.h5"]
    client.wait_for_workers(2, timeout=120)  # its nanny started a new one
    assert seen["pid"] not in client.run(os.getpid).values()
    assert [r.status for r in rows] == ["done", "done", "failed", "done"]
    _assert_same_outputs(out, reference, slides)  # the dead worker's partial folder is gone
    assert _csv_without_seconds(out / "cohort.csv") == _csv_without_seconds(
        reference / "cohort.csv"
    )


def test_a_worker_that_cannot_read_the_model_is_one_line(slides, client, tmp_path):
    from wsi_saliency.config import ScanConfig

    missing = tmp_path / "gone" / "model.keras"
    with pytest.raises(WsiSaliencyError) as err:
        dist.scan_cohort_distributed(
            slides[:1], missing, tmp_path / "out", ScanConfig(), client, progress=False
        )
    message = str(err.value)
    assert message.startswith("Dask worker tcp://127.0.0.1:") and "\n" not in message
    assert f"model file {missing} does not exist" in message


def test_a_worker_that_does_not_see_out_is_told_so(tmp_path, tiny_model):
    problem = dist.check_worker(tmp_path, tiny_model, ".probe-the-client-wrote")
    assert problem.startswith("does not see the output folder")
    assert "filesystem every worker sees" in problem
    (tmp_path / ".probe").touch()
    assert dist.check_worker(tmp_path, tiny_model, ".probe") is None


def test_workers_check_the_device_asked_for(slides, client, tiny_model, tmp_path):
    """``--device gpu`` / ``cpu`` on a cluster: each worker checks what its own backend sees
    (a client on a login node has no GPU), in one line, before any slide is handed out."""
    from wsi_saliency.backend import device_info
    from wsi_saliency.config import ScanConfig

    if device_info().has_gpu:
        pytest.skip("checks the messages of a machine without a GPU")
    (tmp_path / ".probe").touch()
    assert dist.check_worker(tmp_path, tiny_model, ".probe", "cpu") is None
    assert dist.check_worker(tmp_path, tiny_model, ".probe", "auto") is None
    assert dist.check_worker(tmp_path, tiny_model, ".probe", "gpu").startswith("sees no GPU (")
    out = tmp_path / "out"
    with pytest.raises(WsiSaliencyError) as err:
        dist.scan_cohort_distributed(
            slides[:1], tiny_model, out, ScanConfig(), client, progress=False, device="gpu"
        )
    message = str(err.value)
    assert message.startswith("Dask worker tcp://127.0.0.1:") and " sees no GPU (" in message
    assert "--device gpu was asked for" in message and "\n" not in message
    assert not (out / slides[0].stem).exists()  # nothing was handed out


def test_device_gpu_on_a_cluster_is_left_to_the_workers(slides, tiny_model, tmp_path, monkeypatch):
    """``wsi-saliency --device gpu scan --cluster ...`` on a client without a GPU: the client
    does not fail (nor import the framework to look); the device goes to the workers' check."""
    import contextlib

    from wsi_saliency.scan.cohort import CohortRow

    seen: dict = {}

    @contextlib.contextmanager
    def fake_client(cluster, scheduler, **kw):
        yield "client"

    def fake_scan(paths, model, out, cfg, client, **kw):
        seen["device"] = kw["device"]
        return [CohortRow(str(p), "done") for p in paths]

    monkeypatch.setattr(dist, "cluster_client", fake_client)
    monkeypatch.setattr(dist, "scan_cohort_distributed", fake_scan)
    args = _scan_args(slides[:1], tiny_model, tmp_path / "o", "--cluster", "local:2")
    result = runner.invoke(app, ["--device", "gpu", *args])
    assert result.exit_code == 0, result.output
    assert seen["device"] == "gpu"


def test_unreachable_scheduler_is_one_line(slides, tiny_model, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT_S", 1.0)
    args = _scan_args(
        slides[:1], tiny_model, tmp_path / "o", "--scheduler", f"tcp://127.0.0.1:{port}"
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert "dask scheduler" in lines[-1] and "Traceback" not in result.output


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--cluster", "local:0"], "is not a cluster"),
        (["--cluster", "everywhere"], "is not a cluster"),
        (["--scheduler", "localhost"], "is not a scheduler address"),
        (["--cluster", "local:2", "--scheduler", "tcp://h:8786"], "exclude each other"),
    ],
)
def test_bad_cluster_options_are_usage_errors(extra, words, tmp_path):
    result = runner.invoke(
        app, ["scan", "x.svs", "--model", "m.keras", "-o", str(tmp_path), *extra]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and words in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cluster_local_without_a_gpu_names_local_n(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(InputError, match=r"none is visible .* use --cluster local:N"):
        with dist.cluster_client("local"):
            pass


def test_cluster_local_pins_one_worker_per_gpu(monkeypatch):
    """``--cluster local`` on a node with GPUs 3 and 5 (as CUDA_VISIBLE_DEVICES says): two
    worker processes, each seeing its own GPU only, the cores shared between them."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with dist.cluster_client("local", log=lambda m: None) as c:
        seen = c.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"]))
        threads = {w["nthreads"] for w in c.scheduler_info()["workers"].values()}
        retries = c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    cores = len(os.sched_getaffinity(0))
    assert sorted(seen.values()) == [("3", str(max(1, cores // 2))), ("5", str(max(1, cores // 2)))]
    assert threads == {1}  # one slide at a time per worker
    assert retries == dist.ALLOWED_FAILURES  # a slide whose workers keep dying fails in the end


def test_cluster_option_reaches_the_library(slides, tiny_model, tmp_path, monkeypatch):
    """``--cluster local:2`` starts ``cluster_client('local:2', None)`` and scans through it
    (the cluster itself is the module's, tested above)."""
    import contextlib

    from wsi_saliency.scan.cohort import CohortRow

    calls: dict = {}

    @contextlib.contextmanager
    def fake_client(cluster, scheduler, **kw):
        calls["spec"] = (cluster, scheduler)
        yield "client"

    def fake_scan(paths, model, out, cfg, client, **kw):
        calls["scan"] = (paths, client, kw["overwrite"])
        return [CohortRow(str(p), "done") for p in paths]

    monkeypatch.setattr(dist, "cluster_client", fake_client)
    monkeypatch.setattr(dist, "scan_cohort_distributed", fake_scan)
    args = _scan_args(slides[:2], tiny_model, tmp_path / "o", "--cluster", "local:2", "--overwrite")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls["spec"] == ("local:2", None)
    assert calls["scan"] == (slides[:2], "client", True)


def test_worker_threads_share_the_cores():
    env = dist.worker_env(3, gpu="1")
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "3"
    assert dist.worker_env(0)[
        "OMP_NUM_THREADS"
    ] == "1" and "CUDA_VISIBLE_DEVICES" not in dist.worker_env(0)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,-1,4")
    assert dist.visible_gpus() == ["2", "3"]  # CUDA stops at the first invalid id
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert dist.visible_gpus() == []


def test_the_cluster_client_imports_no_framework(slides, tiny_model, tmp_path):
    """``wsi-saliency scan --cluster``: the client only hands slides out, so its process never
    imports TensorFlow (2.5 s and several hundred MB; the workers load the model)."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        import atexit, sys
        atexit.register(lambda: print("TENSORFLOW", "tensorflow" in sys.modules, flush=True))
        sys.argv = ["wsi-saliency", *sys.argv[1:]]
        from wsi_saliency.cli import main
        main()
        """
    )
    args = _scan_args(slides[:1], tiny_model, tmp_path / "o", "--cluster", "local:1")
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 scanned, 0 skipped (complete), 0 failed" in res.stdout
    assert "TENSORFLOW False" in res.stdout
