"""Scan a cohort on a Dask cluster: one task per slide, each worker keeping the model loaded.

The in-process loop (``wsi_saliency.scan.cohort.scan_cohort``) stays the default; this module
is used with ``--cluster`` / ``--scheduler`` or a ``dask.distributed.Client`` of your own (a
notebook, a ``dask-jobqueue`` ``SLURMCluster``). Importing it imports no Dask: Dask is an
optional dependency (``pip install 'wsi-saliency[dask]'``), imported when a cluster is used.

How a cohort runs:

- The client skips slides whose outputs in OUT are complete (as the serial loop does), checks
  that every worker sees OUT (a file the client writes there), can write to it and can read the
  model file, then submits one task per remaining slide.
- A task runs ``cohort.scan_one``, the body of the serial loop, on its worker: the worker loads
  the model file once (``worker_scanner``, keyed by path, size and modification time) and keeps
  it for all its slides; it writes the slide's outputs into OUT itself, in a hidden
  ``.<stem>.partial-<attempt>`` folder renamed when complete, and returns the cohort row. OUT
  must be on a filesystem every worker sees.
- A slide that fails with an exception comes back as a ``failed`` row (as in the serial loop).
  A worker that dies (killed, out of memory) loses only its slide: the scheduler runs that
  task again on another worker (``ALLOWED_FAILURES`` times at most), which first removes the
  dead attempt's partial folder; a folder ``OUT/<stem>/`` is only ever a complete one.
- The client writes ``cohort.csv`` (in slide order, atomically) after every row that arrives,
  so it is the serial run's file whatever order the slides finish in.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wsi_saliency.config import ScanConfig, usable_cores
from wsi_saliency.errors import InputError, WsiSaliencyError
from wsi_saliency.scan.cohort import (
    CohortRow,
    Scanner,
    _write_csv,
    kept_row,
    load_scanner,
    scan_one,
)

DASK_INSTALL = "pip install 'wsi-saliency[dask]' (Dask distributed)"
ALLOWED_FAILURES = 2
"""Worker deaths a slide may cause before it is reported as failed: a worker killed by its
batch system is retried, a slide that runs every worker out of memory is not retried forever."""
CONNECT_TIMEOUT_S = 20.0
WORKERS_TIMEOUT_S = 60.0
_SCHEDULER = re.compile(r"^(tcp|tls|ucx|ws|wss)://[^\s/:]+:\d{1,5}/?$")
_LOCAL = re.compile(r"^local(?::(\d+))?$")


# ---------------------------------------------------------------- options (no Dask needed)


def check_cluster_options(cluster: str | None, scheduler: str | None) -> int | None:
    """Validate ``--cluster`` / ``--scheduler`` before any work (one-line ``InputError``).

    Returns N of ``local:N``, 0 for ``local`` (one worker per GPU), None without ``--cluster``.
    """
    if cluster is not None and scheduler is not None:
        raise InputError(
            "--cluster and --scheduler exclude each other: --cluster starts a cluster on this "
            "machine, --scheduler joins a running one"
        )
    if scheduler is not None and not _SCHEDULER.match(scheduler):
        raise InputError(
            f"--scheduler {scheduler!r} is not a scheduler address: pass tcp://HOST:PORT "
            "(what `dask scheduler` prints, port 8786 by default)"
        )
    if cluster is None:
        return None
    m = _LOCAL.match(cluster)
    if not m or (m.group(1) is not None and int(m.group(1)) < 1):
        raise InputError(
            f"--cluster {cluster!r} is not a cluster: pass 'local' (one worker per GPU) or "
            "'local:N' (N worker processes on the CPUs), or --scheduler tcp://HOST:PORT"
        )
    return int(m.group(1)) if m.group(1) else 0


def visible_gpus() -> list[str]:
    """The GPUs a worker may be pinned to, without importing a framework (JAX would take the
    GPU memory of this, the client, process): ``CUDA_VISIBLE_DEVICES`` when it is set (empty or
    ``-1``: none), else the indices ``nvidia-smi`` lists (none without ``nvidia-smi``)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids: list[str] = []
        for item in (s.strip() for s in env.split(",")):
            if not item or item.startswith("-"):  # CUDA stops at the first invalid id
                break
            ids.append(item)
        return ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip().isdigit()]


def worker_env(threads: int, gpu: str | None = None) -> dict[str, str]:
    """Environment of one local worker process: compute threads capped at ``threads`` (so N
    workers do not oversubscribe the cores) and, on a GPU node, the one GPU it may see."""
    t = str(max(1, threads))
    env = {
        "OMP_NUM_THREADS": t,
        "MKL_NUM_THREADS": t,
        "OPENBLAS_NUM_THREADS": t,
        "TF_NUM_INTRAOP_THREADS": t,
        "TF_NUM_INTEROP_THREADS": t,
    }
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise InputError(f"--cluster and --scheduler need Dask: {DASK_INSTALL}") from None
    return distributed


@contextlib.contextmanager
def cluster_client(
    cluster: str | None,
    scheduler: str | None = None,
    *,
    log: Callable[[str], None] = print,
    connect_timeout_s: float | None = None,
    workers_timeout_s: float | None = None,
) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``--cluster`` or ``--scheduler``; closed on exit.

    ``local``: a cluster on this machine with one worker process per GPU, each seeing only its
    GPU (``CUDA_VISIBLE_DEVICES``); ``InputError`` when there is none. ``local:N``: N worker
    processes on the CPUs, each with ``cores // N`` compute threads. Every local worker runs
    one slide at a time (one Dask thread). ``scheduler``: join the running cluster at that
    address; ``WsiSaliencyError`` in one line when it cannot be reached or has no workers.
    """
    connect_timeout_s = connect_timeout_s or CONNECT_TIMEOUT_S
    workers_timeout_s = workers_timeout_s or WORKERS_TIMEOUT_S
    n = check_cluster_options(cluster, scheduler)
    if n is None and scheduler is None:
        raise InputError("cluster_client needs a cluster spec ('local', 'local:N') or a scheduler")
    distributed = _import_distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise WsiSaliencyError(
                f"cannot reach the Dask scheduler at {scheduler} ({first}): start it with "
                "`dask scheduler` and check the address, the port and the firewall"
            ) from None
        try:
            _wait_for_workers(client, scheduler, workers_timeout_s)
            log(f"Dask scheduler {scheduler}: {_describe_workers(client)}")
            yield client
        finally:
            client.close()
        return
    spec = _local_spec(distributed, n)
    try:
        local = distributed.SpecCluster(**spec, name=f"wsi-saliency {cluster}")
    except (RuntimeError, OSError, TimeoutError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WsiSaliencyError(
            f"could not start the local Dask cluster {cluster} ({first}): rerun with --debug "
            "for the workers' errors"
        ) from exc
    with local, distributed.Client(local) as client:
        _wait_for_workers(client, cluster, workers_timeout_s)
        log(f"Dask cluster {cluster}: {_describe_workers(client)}")
        yield client


def _local_spec(distributed, n: int) -> dict:
    """``SpecCluster`` arguments for ``local`` (n = 0: one worker per GPU) or ``local:n``:
    processes (a Nanny each, which restarts a worker that dies), one Dask thread each, the
    machine's memory shared out, per-worker environment (thread caps, the GPU)."""
    import logging

    if n == 0:
        gpus = visible_gpus()
        if not gpus:
            raise InputError(
                "--cluster local starts one worker per GPU, and none is visible (nvidia-smi, "
                "CUDA_VISIBLE_DEVICES): use --cluster local:N for N worker processes on the CPUs"
            )
        envs = [worker_env(usable_cores() // len(gpus), gpu) for gpu in gpus]
        names = [f"gpu{g}" for g in gpus]
    else:
        envs = [worker_env(usable_cores() // n) for _ in range(n)]
        names = [f"cpu{i}" for i in range(n)]
    memory = max(1, distributed.system.MEMORY_LIMIT // len(envs))
    workers = {
        name: {
            "cls": distributed.Nanny,
            "options": {
                "nthreads": 1,
                "memory_limit": memory,
                "env": env,
                "host": "127.0.0.1",
                "silence_logs": logging.ERROR,
            },
        }
        for name, env in zip(names, envs, strict=True)
    }
    scheduler = {
        "cls": distributed.Scheduler,
        "options": {
            "host": "127.0.0.1",
            "allowed_failures": ALLOWED_FAILURES,
            "dashboard": _has_module("bokeh"),
            "dashboard_address": ":0",
        },
    }
    return {"workers": workers, "scheduler": scheduler, "silence_logs": logging.ERROR}


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _wait_for_workers(client, where: str, timeout_s: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (OSError, TimeoutError):
        raise WsiSaliencyError(
            f"the Dask cluster at {where} has no worker after {timeout_s:.0f} s: start workers "
            f"with `dask worker {where} --nthreads 1`"
        ) from None


def _describe_workers(client) -> str:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    link = f"; dashboard {client.dashboard_link}" if _has_module("bokeh") else ""
    return f"{len(workers)} workers, {threads} threads{link}"


# ---------------------------------------------------------------- on the workers

_SCANNERS: dict[tuple, Scanner] = {}
_LOAD_LOCK = threading.Lock()
_SCAN_LOCK = threading.Lock()
LOADS = 0
"""How many times this process loaded a model file (read by tests through ``client.run``)."""


def worker_scanner(model_path: Path, cfg: ScanConfig) -> Scanner:
    """The ``Scanner`` of this worker process for ``model_path`` and ``cfg``, loaded on the
    first slide and kept for the next ones (a changed file, size or mtime, is loaded again;
    one model is kept at a time)."""
    global LOADS
    st = os.stat(model_path)
    key = (str(model_path), st.st_size, st.st_mtime_ns, cfg)
    with _LOAD_LOCK:
        scanner = _SCANNERS.get(key)
        if scanner is None:
            _SCANNERS.clear()
            scanner = _SCANNERS[key] = load_scanner(model_path, cfg)
            LOADS += 1
    return scanner


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _scan_task(
    slide: Path, out: Path, model_path: Path, cfg: ScanConfig, options: dict[str, Any]
) -> tuple[CohortRow, list[str]]:
    """One slide on a worker: ``cohort.scan_one`` with the worker's kept model. Returns the
    row and the log lines (the client prints them). A worker runs one slide at a time even
    with several Dask threads: the scan itself uses the cores (reading threads, the model)."""
    messages: list[str] = []
    debug = bool(options.get("debug"))
    try:
        scanner = worker_scanner(model_path, cfg)
    except Exception as exc:  # noqa: BLE001 - reported as this slide's failure
        if debug:
            raise
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        message = f"worker {_worker_name()} cannot load the model file {model_path}: {first}"
        messages.append(f"error: {slide.name}: {message}")
        return CohortRow(str(slide), "failed", error=message), messages
    with _SCAN_LOCK:
        row = scan_one(
            slide,
            out,
            scanner,
            cfg,
            progress=False,
            log=messages.append,
            debug=debug,
            tissue_masks=options.get("tissue_masks"),
            rois=options.get("rois"),
            attempt=uuid.uuid4().hex[:8],  # a retried slide never writes into a dead one's folder
        )
    return row, messages


def check_worker(out: Path, model_path: Path, probe: str, device: str = "auto") -> str | None:
    """Run on each worker before a cohort: None if it sees OUT (the client's ``probe`` file
    in it), can write there, can read the model file and, for ``device`` ``gpu`` / ``cpu``
    (the root ``--device``), its backend sees a GPU / none; else what is wrong, in words.

    The device is checked here, not on the client: the GPUs are the workers' (a client on a
    login node has none), and ``--device cpu`` cannot hide a remote worker's GPUs once it runs.
    """
    from wsi_saliency.model.io import read_card

    if not (out / probe).is_file():
        return (
            f"does not see the output folder {out} that the client writes to: OUT must be on "
            "a filesystem every worker sees (the same path on every machine)"
        )
    test = out / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        test.write_text("")
        test.unlink()
    except OSError as exc:
        return f"cannot write to the output folder {out} ({exc.strerror}): make it writable there"
    try:
        read_card(model_path)
    except WsiSaliencyError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read the model file {model_path} ({exc.strerror})"
    if device in ("gpu", "cpu"):
        from wsi_saliency.backend import device_info, import_keras_quietly

        import_keras_quietly()  # as loading the model would, a moment later
        seen = device_info()
        if device == "gpu" and not seen.has_gpu:
            return (
                f"sees no GPU ({seen.describe()}) and --device gpu was asked for: start the "
                "workers on GPU nodes with the backend's GPU build, or use --device auto"
            )
        if device == "cpu" and seen.has_gpu:
            return (
                f"sees a GPU ({seen.describe()}) and --device cpu was asked for: start the "
                "workers with CUDA_VISIBLE_DEVICES=-1, or use --device auto"
            )
    return None


# ---------------------------------------------------------------- on the client


def check_workers(client, out: Path, model_path: Path, device: str = "auto") -> None:
    """``WsiSaliencyError`` naming the first worker that cannot see or write OUT or read the
    model file, or lacks the ``device`` asked for (see ``check_worker``)."""
    probe = f".wsi-saliency-probe-{uuid.uuid4().hex[:8]}"
    (out / probe).write_text("")
    try:
        answers = client.run(check_worker, out, model_path, probe, device)
    finally:
        (out / probe).unlink(missing_ok=True)
    for worker, problem in sorted(answers.items()):
        if problem:
            raise WsiSaliencyError(f"Dask worker {worker} {_as_clause(problem)}")


def _as_clause(problem: str) -> str:
    """'does not see ...', 'sees no GPU ...' read after the worker's name; a library message
    gets a colon."""
    return problem if problem.startswith(("does not", "cannot", "sees")) else f": {problem}"


def scan_cohort_distributed(
    slides: list[Path],
    model_path: Path,
    out: Path,
    cfg: ScanConfig,
    client,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    debug: bool = False,
    tissue_masks: Path | None = None,
    rois: Path | None = None,
    on_row: Callable[[CohortRow], None] | None = None,
    device: str = "auto",
) -> list[CohortRow]:
    """``scan_cohort`` on the Dask cluster of ``client``: one task per slide; returns one row
    per slide, in the order of ``slides``, and leaves the same files in ``out``.

    Paths are made absolute (workers do not share this process's working folder); the model
    path recorded in the outputs is that absolute path. ``on_row`` is called on the client
    with each row as it arrives (skipped slides first). ``device`` ``gpu`` / ``cpu``: every
    worker must see a GPU / none (checked on the workers before any slide is handed out).
    """
    from tqdm import tqdm

    from wsi_saliency.outputs.atomic import ensure_writable_dir

    distributed = _import_distributed()
    out = ensure_writable_dir(Path(out).resolve())
    model_path = Path(model_path).resolve()
    slides = [Path(s).resolve() for s in slides]
    options = {
        "debug": debug,
        "tissue_masks": None if tissue_masks is None else Path(tissue_masks).resolve(),
        "rois": None if rois is None else Path(rois).resolve(),
    }
    rows: dict[int, CohortRow] = {}

    def arrived(i: int, row: CohortRow) -> None:
        rows[i] = row
        _write_csv(out / "cohort.csv", [rows[k] for k in sorted(rows)])
        if on_row is not None:
            on_row(row)

    todo: list[int] = []
    for i, slide in enumerate(slides):
        kept = kept_row(slide, out, overwrite=overwrite)
        if kept is None:
            todo.append(i)
            continue
        log(f"{slide.name}: complete outputs in {out / slide.stem} from an earlier run, skipped")
        arrived(i, kept)
    if not todo:
        return [rows[i] for i in range(len(slides))]
    check_workers(client, out, model_path, device)
    futures = {
        client.submit(
            _scan_task,
            slides[i],
            out,
            model_path,
            cfg,
            options,
            key=f"wsi-saliency-scan-{slides[i].stem}-{uuid.uuid4().hex[:8]}",
            pure=False,
        ): i
        for i in todo
    }
    bar = tqdm(
        total=len(slides),
        initial=len(slides) - len(todo),
        desc="slides",
        unit="slide",
        disable=not progress or len(slides) < 2,
    )
    try:
        for future in distributed.as_completed(futures):
            i = futures[future]
            row, messages = _task_result(future, slides[i], distributed, debug)
            for message in messages:
                log(message)
            arrived(i, row)
            bar.update(1)
    finally:
        bar.close()
        left = [f for f in futures if not f.done()]
        if left:  # interrupted: the cluster stops on these slides too
            client.cancel(left)
    return [rows[i] for i in range(len(slides))]


def _task_result(future, slide: Path, distributed, debug: bool) -> tuple[CohortRow, list[str]]:
    """The task's ``(row, log lines)``; a failed row when the task itself could not finish:
    its workers kept dying (killed, out of memory), or the cluster lost it."""
    try:
        return future.result()
    except distributed.KilledWorker:
        if debug:
            raise
        message = (
            f"{slide}: every Dask worker that scanned it died (killed, or out of memory?), "
            "as many times as the scheduler allows: rerun to try it again, or scan it alone"
        )
    except Exception as exc:  # noqa: BLE001 - one lost task must not stop the cohort
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        message = f"{slide}: the Dask task failed: {type(exc).__name__}: {first}"
    return CohortRow(str(slide), "failed", error=message), [f"error: {message}"]
