"""Shared CLI plumbing: the --debug switch and turning known errors into one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import typer

from wsi_saliency.errors import InputError, WsiSaliencyError


@dataclass
class _State:
    debug: bool = False
    device: str = "auto"  # auto | cpu | gpu (the root --device option)


STATE = _State()


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn a ``WsiSaliencyError`` into ``error: <message>`` on stderr and its exit code.

    With ``--debug`` the exception propagates with its traceback. KeyboardInterrupt exits 130.
    """
    try:
        yield
    except WsiSaliencyError as exc:
        if STATE.debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if STATE.debug:
            raise
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def prepare_backend(*, import_now: bool = True, local_device: bool = True) -> None:
    """Call before Keras is imported: TensorFlow stays quiet (unless --debug), TensorFlow is
    the default backend, and ``--device`` is applied: ``cpu`` hides the GPUs from every
    backend (and from the workers a local cluster starts), ``gpu`` fails with one line when
    the backend sees none. Keras is then imported (quietly: ``import_keras_quietly``), unless
    ``import_now`` is False (a scan imports it while it lays out its first slide; a cluster
    scan's client never does). ``local_device=False``: the work runs elsewhere (a cluster's
    workers, which check ``--device`` themselves), so ``gpu`` is not checked here."""
    import os

    if not STATE.debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _require_backend(os.environ["KERAS_BACKEND"])
    if STATE.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        os.environ["JAX_PLATFORMS"] = "cpu"
    check_gpu = STATE.device == "gpu" and local_device
    if import_now or check_gpu:
        from wsi_saliency.backend import import_keras_quietly

        import_keras_quietly()
    if check_gpu:
        from wsi_saliency.backend import require_gpu

        require_gpu()


BACKEND_EXTRAS = (
    "pip install -e '.[cpu]' (TensorFlow, CPU), '.[gpu]' (TensorFlow with CUDA), "
    "'.[jax]' or '.[torch]'"
)


def _require_backend(backend: str) -> None:
    """One line naming the install extras when the Keras backend's framework is missing
    (Keras itself would die with a ModuleNotFoundError traceback on import)."""
    import importlib.util

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module is None:
        raise InputError(f"KERAS_BACKEND={backend!r} is not one of tensorflow, jax, torch")
    # Found, not imported: a scan imports it while it lays out its first slide.
    if importlib.util.find_spec(module) is None:
        raise InputError(
            f"the Keras backend {backend!r} is not installed: install wsi-saliency with a "
            f"backend extra, {BACKEND_EXTRAS}, or set KERAS_BACKEND to one you have"
        )
