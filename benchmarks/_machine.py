"""What else runs on the machine while a benchmark measures (shared by the benchmarks)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path


def training_processes() -> list[str]:
    """Command lines of ``wsi-saliency train`` processes (they distort the figures)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if "wsi-saliency train" in cmd or "wsi_saliency train" in cmd:
            found.append(f"{pid}: {cmd[:160]}")
    return found


def busy_processes(window_s: float = 1.0, min_cpu: float = 0.1) -> list[str]:
    """Other processes using more than ``min_cpu`` of a core over ``window_s`` (anything
    besides this benchmark that competes for the CPUs, e.g. other engineers' tests)."""

    def ticks() -> dict[str, tuple[int, str]]:
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue
            out[pid] = (int(fields[11]) + int(fields[12]), cmd.strip()[:120])
        return out

    hz = os.sysconf("SC_CLK_TCK")
    before = ticks()
    time.sleep(window_s)
    after = ticks()
    busy = []
    for pid, (t1, cmd) in after.items():
        if pid in before:
            share = (t1 - before[pid][0]) / hz / window_s
            if share >= min_cpu:
                busy.append(f"{pid} ({share:.0%} of a core): {cmd}")
    return busy


def machine_start() -> dict:
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_1_5_15min_at_start": [round(v, 2) for v in os.getloadavg()],
        "other_training_processes_at_start": training_processes(),
        "busy_processes_at_start": busy_processes(),
    }


def machine_end(start: dict, versions: dict) -> dict:
    """The machine, the load at ``start`` (``machine_start()``) and now, what else ran, and
    ``versions`` (each benchmark names the libraries it measured)."""
    import platform

    end_procs = training_processes()
    busy_at_end = busy_processes()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        **start,
        "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
        "other_training_processes_at_end": end_procs,
        "busy_processes_at_end": busy_at_end,
        "contended": bool(
            start["other_training_processes_at_start"]
            or end_procs
            or start["busy_processes_at_start"]
            or busy_at_end
        ),
        "python": platform.python_version(),
        **versions,
    }


def keras_versions(extra: dict | None = None) -> dict:
    """Keras, its backend, TensorFlow and NumPy versions, then ``extra`` (the libraries a
    benchmark adds), then TensorFlow's thread settings and GPUs: ``machine_end``'s
    ``versions`` for the benchmarks that measure Keras on TensorFlow."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        **(extra or {}),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def warn_if_contended_at_start(start: dict) -> None:
    """Print a warning when ``machine_start()`` saw other processes using the CPUs."""
    others = start["other_training_processes_at_start"] + start["busy_processes_at_start"]
    if others:
        print(
            "WARNING: other processes are using the CPUs; the figures are contended:\n  "
            + "\n  ".join(others),
            flush=True,
        )


def warn_if_contended_at_end(machine: dict) -> None:
    """Print a note when ``machine_end()`` found the run contended."""
    if machine["contended"]:
        print(
            "\nCONTENDED: other processes shared the CPUs at the start or end of this "
            "benchmark (see machine.busy_processes_* in the JSON)"
        )


def write_json_atomic(path: Path, data: dict) -> None:
    """``data`` as indented JSON at ``path``, written to a temporary name and renamed."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
