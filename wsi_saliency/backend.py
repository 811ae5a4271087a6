"""What differs between Keras backends and machines: devices, precision, threads.

Everything else in the package is written with ``keras`` and ``keras.ops``. The backend is
chosen by ``KERAS_BACKEND`` before Keras is imported; TensorFlow is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsi_saliency.errors import InputError

# What TensorFlow 2.2x writes to stderr on every import, whatever TF_CPP_MIN_LOG_LEVEL says
# (its C++ logging is not set up yet): the two lines of each notice, held back by
# import_keras_quietly.
IMPORT_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "rebuild TensorFlow with the appropriate compiler flags",
)


def import_keras_quietly() -> None:
    """Import Keras (and its backend) without TensorFlow's import notices on stderr when
    ``TF_CPP_MIN_LOG_LEVEL`` asks for quiet (2 or more; the command line sets 2 unless
    ``--debug``). Only the lines of ``IMPORT_NOISE`` are dropped: anything else written to
    stderr meanwhile (another thread's warning, a failing import's message) is written
    after. Elsewhere (a notebook, ``--debug``), a plain import."""
    import os
    import sys
    import tempfile

    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() in ("2", "3")
    if "keras" in sys.modules or not quiet:
        import keras  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = drop_import_noise(held.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def drop_import_noise(text: str) -> str:
    """``text`` without the lines of ``IMPORT_NOISE``."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not any(n in line for n in IMPORT_NOISE))


def backend_name() -> str:
    import keras

    return keras.backend.backend()


@dataclass(frozen=True)
class DeviceInfo:
    backend: str
    backend_version: str
    gpus: tuple[str, ...]

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        devices = ", ".join(self.gpus) if self.gpus else "CPU only"
        return f"backend {self.backend} {self.backend_version}; devices: {devices}"


def device_info() -> DeviceInfo:
    """The backend, its version and the GPUs it can see."""
    name = backend_name()
    if name == "tensorflow":
        import tensorflow as tf

        gpus = tuple(d.name for d in tf.config.list_physical_devices("GPU"))
        return DeviceInfo(name, tf.__version__, gpus)
    if name == "jax":
        import jax

        gpus = tuple(str(d) for d in jax.devices() if d.platform == "gpu")
        return DeviceInfo(name, jax.__version__, gpus)
    if name == "torch":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = tuple(torch.cuda.get_device_name(i) for i in range(n))
        return DeviceInfo(name, torch.__version__, gpus)
    return DeviceInfo(name, "?", ())


GPU_INSTALL = {
    "tensorflow": "pip install -e '.[gpu]'",
    "jax": "pip install -U 'jax[cuda12]'",
    "torch": "a CUDA build of torch from pytorch.org",
}


def require_gpu(device: DeviceInfo | None = None) -> DeviceInfo:
    """``device_info()``, or ``InputError`` in one line when the backend sees no GPU."""
    device = device or device_info()
    if not device.has_gpu:
        raise InputError(
            f"--device gpu was asked for but the {device.backend} backend sees no GPU "
            f"({device.describe()}): install its GPU build ({GPU_INSTALL.get(device.backend, '?')})"
            " and check nvidia-smi, or use --device auto"
        )
    return device


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512_BF16 or AMX-BF16, from Linux's
    ``/proc/cpuinfo``; False where that file is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def configure_precision(
    mode: str, *, device: DeviceInfo | None = None, cpu_bfloat16: bool = False
) -> str:
    """Set Keras' global dtype policy to :func:`precision_policy`'s (training builds its
    model under it) and return its name."""
    import keras

    policy = precision_policy(mode, device=device, cpu_bfloat16=cpu_bfloat16)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def precision_policy(
    mode: str, *, device: DeviceInfo | None = None, cpu_bfloat16: bool = False
) -> str:
    """The Keras dtype policy for ``mode``: ``auto`` uses mixed precision only on a GPU.

    Returns the policy name: ``mixed_float16`` on a GPU. ``on`` without a GPU is refused
    (float16 is slow on CPUs), except with ``cpu_bfloat16`` (scans) on a CPU with bfloat16
    instructions, where it is ``mixed_bfloat16``: ResNet50 ran 1.45x faster in it on this
    2-core AVX512_BF16 CPU (``benchmarks/bench_precision.py``, which also measures what it changes
    in the probabilities and maps).
    """
    device = device or device_info()
    if mode == "on" and not device.has_gpu:
        if not (cpu_bfloat16 and cpu_has_bfloat16()):
            where = (
                "for scans, a CPU with bfloat16 instructions (AVX512_BF16 or AMX), which this "
                "one lacks"
                if cpu_bfloat16
                else "mixed precision on a CPU is slower"
            )
            raise InputError(
                f"mixed precision was requested but no GPU is visible ({device.describe()}; "
                f"{where}): use mixed_precision=auto or off"
            )
        return "mixed_bfloat16"
    return "mixed_float16" if (mode == "on" or (mode == "auto" and device.has_gpu)) else "float32"


def jit_flag(mode: str):
    return {"auto": "auto", "on": True, "off": False}[mode]


def gradcam_jit(mode: str, device: DeviceInfo | None = None) -> bool:
    """Whether the Grad-CAM pass is compiled (TensorFlow: XLA; JAX: ``jax.jit``).

    ``auto`` compiles on JAX (an uncompiled pass runs op by op) and, on TensorFlow, only with
    a GPU: on a CPU, XLA ran ResNet50's Grad-CAM at 0.91x the graph's rate and its first call
    took 2.1 s instead of 1.5 s (``benchmarks/results/startup.json``, this 2-core CPU; the
    tiny test model 0.84x, ``benchmarks/results/backends.json``). PyTorch runs
    eagerly whatever the mode (``torch.compile`` is not used).
    """
    if mode != "auto":
        return {"on": True, "off": False}[mode]
    device = device or device_info()
    return device.backend == "jax" or (device.backend == "tensorflow" and device.has_gpu)
