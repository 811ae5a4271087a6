"""Train the patch classifier on PCam-format data: two phases, logs, best model, resume.

Run folder layout (``out``):
- ``model.keras``          best model by valid AUC, with its card (see ``model.io``)
- ``config.yaml``          the resolved config
- ``metrics.json``         final metrics of the best model on the valid split
- ``run.json``             versions, devices, seed, data, timings, phases
- ``logs/history.csv``     one row per epoch: loss, accuracy, AUC on train and valid, lr
- ``logs/tensorboard/``    TensorBoard event files
- ``checkpoints/last.keras`` + ``checkpoints/state.json``: what ``resume`` continues from

Valid metrics are computed after each epoch by ``evaluation.evaluate_split`` on the model as
it will be saved (BatchNorm statistics re-estimated first, see ``recalibrate_batchnorm``): the
same function, data and weights as the final ``metrics.json``, so the numbers logged for the
kept epoch are the numbers reported for ``model.keras``.

``checkpoints/state.json`` commits an epoch: it is written after ``last.keras`` and before
``model.keras`` is replaced. A resumed run drops rows of ``logs/history.csv`` for epochs the
state does not hold (an interruption between the two writes) and, when the last committed
epoch is the best one, re-publishes ``model.keras`` from ``last.keras``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.config import AugmentConfig, RunConfig, dump_yaml
from wsi_saliency.errors import InputError, WsiSaliencyError

CHECKPOINT_DIR = "checkpoints"


# ---------------------------------------------------------------- input pipeline


def prefetch(iterator: Iterator, size: int = 4) -> Iterator:
    """Run ``iterator`` in a background thread, ``size`` items ahead (HDF5 reads and
    decompression overlap with the training step). Errors are re-raised in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="wsi-saliency-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def epoch_batches(
    split, batch_size: int, *, shuffle: bool, seed: int, buffer_chunks: int, first_epoch: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches, epoch after epoch: ``(x float32 [B,P,P,3] in [0,255], y float32 [B,1])``.

    Training batches are shuffled by chunk and within a buffer, reshuffled every epoch;
    validation batches come in file order, the last batch of each pass partial, so
    ``ceil(n / batch_size)`` steps are exactly one pass.
    """
    epoch = first_epoch
    while True:
        for x, y in split.iter_batches(
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            buffer_chunks=buffer_chunks,
            drop_remainder=shuffle,
        ):
            yield x.astype(np.float32), y.astype(np.float32).reshape(-1, 1)
        epoch += 1


def make_augmenter(cfg: AugmentConfig, seed: int):
    """The study's augmentation as Keras preprocessing layers (active only when training):
    rotation, zoom, horizontal/vertical flips, translation; optional colour jitter."""
    import keras
    from keras import layers

    steps: list = []
    if cfg.flip_horizontal or cfg.flip_vertical:
        mode = {
            (True, True): "horizontal_and_vertical",
            (True, False): "horizontal",
            (False, True): "vertical",
        }[(cfg.flip_horizontal, cfg.flip_vertical)]
        steps.append(layers.RandomFlip(mode, seed=seed, name="aug_flip"))
    if cfg.rotation_deg:
        steps.append(
            layers.RandomRotation(
                cfg.rotation_deg / 360.0,
                fill_mode=cfg.fill_mode,
                seed=seed + 1,
                name="aug_rotation",
            )
        )
    if cfg.zoom:
        steps.append(
            layers.RandomZoom(
                (-cfg.zoom, cfg.zoom), fill_mode=cfg.fill_mode, seed=seed + 2, name="aug_zoom"
            )
        )
    if cfg.translate:
        steps.append(
            layers.RandomTranslation(
                cfg.translate,
                cfg.translate,
                fill_mode=cfg.fill_mode,
                seed=seed + 3,
                name="aug_translation",
            )
        )
    if cfg.color_jitter:
        s = cfg.color_jitter
        steps.append(
            layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=0.25 * s,
                contrast_factor=0.5 * s,
                saturation_factor=(max(0.0, 0.5 - 0.4 * s), 0.5 + 0.4 * s),
                hue_factor=0.1 * s,
                seed=seed + 4,
                name="aug_color",
            )
        )
    if keras.backend.backend() == "jax":
        # Keras marks its geometric augmentation layers supports_jit=False because TensorFlow's
        # XLA cannot compile their ImageProjectiveTransformV3; Keras then runs the whole train
        # step of a model holding them uncompiled. Their JAX implementation (keras.ops and
        # stateless seeds carried as variables) compiles, and an uncompiled JAX train step
        # runs op by op: measured in benchmarks/bench_backends.py.
        for layer in steps:
            layer.supports_jit = True
    return keras.Sequential(steps, name="augment")


def recalibrate_batchnorm(
    model, split, batch_size: int, n_batches: int, *, seed: int = 0
) -> tuple[int, int]:
    """Re-estimate the moving statistics of the trainable BatchNorm layers ("precise BN").

    During training BatchNorm averages the statistics of augmented batches; rotation and zoom
    interpolate, which lowers the pixel variance (measured on real PCam: std 57 augmented
    against 66 raw), so at inference on raw patches the layers normalise with the wrong
    statistics and the probabilities shift (valid accuracy 0.56 at AUC 0.88; 0.79 after
    re-estimation). The statistics are replaced by the average over ``n_batches`` un-augmented
    train batches (all the split has, if fewer). Frozen BatchNorm layers (pretrained, inference
    mode) are left alone. Returns ``(layers updated, batches used)``.
    """
    from keras import layers

    bn = [
        layer
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization) and layer.trainable
    ]
    if not bn:
        return 0, 0
    saved = [layer.momentum for layer in bn]
    used = 0
    try:
        batches = split.iter_batches(batch_size, shuffle=True, seed=seed + 7919, epoch=0)
        for k, (x, _) in enumerate(batches):
            if k >= n_batches:
                break
            for layer in bn:  # a cumulative average: batch k gets weight 1 / (k + 1)
                layer.momentum = k / (k + 1.0)
            model(np.asarray(x, np.float32), training=True)
            used = k + 1
        batches.close()
    finally:
        for layer, momentum in zip(bn, saved, strict=False):
            layer.momentum = momentum
    return len(bn), used


class _FirstRows:
    """The first ``n`` patches of an open split, in file order (``train.validation_steps``)."""

    def __init__(self, split, n: int) -> None:
        self.split, self.n = split, min(int(n), split.n)

    def iter_batches(self, batch_size: int, **_) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        left = self.n
        batches = self.split.iter_batches(batch_size, shuffle=False, seed=0)
        try:
            for x, y in batches:
                if left <= 0:
                    return
                yield x[:left], y[:left]
                left -= len(y)
        finally:
            batches.close()


def binary_cross_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities, clipped as Keras clips them (1e-7)."""
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if y.size else float("nan")


# ---------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    name: str  # head | finetune | full
    backbone_from: str | None  # see model.build.set_trainable
    lr: float
    epochs: int


def plan_phases(cfg: RunConfig) -> list[Phase]:
    """Head then fine-tuning with pretrained weights; one 'full' phase when training from scratch
    (freezing a random backbone would teach the head nothing)."""
    from wsi_saliency.model.build import BACKBONE_SPECS

    t = cfg.train
    if cfg.model.weights.lower() == "none":
        return [Phase("full", "all", t.head_lr, t.head_epochs + t.finetune_epochs)]
    finetune_from = t.finetune_from or BACKBONE_SPECS[cfg.model.backbone].finetune_from
    phases = []
    if t.head_epochs:
        phases.append(Phase("head", None, t.head_lr, t.head_epochs))
    if t.finetune_epochs:
        phases.append(Phase("finetune", finetune_from, t.finetune_lr, t.finetune_epochs))
    return phases


# ---------------------------------------------------------------- devices


@dataclass
class DataParallel:
    """How a run uses the local devices: ``strategy`` is ``none`` (one device),
    ``MirroredStrategy`` (TensorFlow) or ``DataParallel`` (Keras' JAX distribution). Each
    step splits the global batch (``data.batch_size``) evenly over ``devices`` and averages
    the gradients over them; the variables are the same on every device, so the model file
    is the one a single-device run writes.

    ``scope()``: where the model's variables are created and it is compiled; ``fit_scope()``:
    where it is trained (JAX's distribution is global, so the same scope; a TensorFlow model
    keeps the strategy it was created under). ``validation_twin(model)``: the model that
    validation scores, a single-device copy on TensorFlow (``predict_on_batch`` of a mirrored
    model gives every replica the whole batch and concatenates their outputs)."""

    mode: str  # auto | off (train.distribute)
    strategy: str
    devices: tuple[str, ...] = ()
    scope: Callable[[], Any] = field(default=contextlib.nullcontext, repr=False)
    fit_scope: Callable[[], Any] = field(default=contextlib.nullcontext, repr=False)

    def validation_twin(self, model):
        """None, or (TensorFlow, data parallel) a clone of ``model`` outside the strategy,
        whose weights ``Validate`` sets from ``model`` before each validation."""
        if self.strategy != "MirroredStrategy":
            return None
        import keras

        return keras.models.clone_model(model)

    def record(self, batch_size: int) -> dict[str, Any]:
        """What ``run.json`` says under ``distribute``."""
        n = max(1, len(self.devices))
        return {
            "mode": self.mode,
            "strategy": self.strategy,
            "devices": list(self.devices),
            "replicas": n,
            "global_batch_size": batch_size,
            "per_replica_batch_size": batch_size // n,
        }


def data_parallel(mode: str, batch_size: int, log: Callable[[str], None] = print) -> DataParallel:
    """``train.distribute``: ``off`` trains on the backend's default device; ``auto`` on every
    local accelerator of the backend (its GPUs; else its CPU devices, which are more than one
    only when configured so, as the tests do), data parallel when there are two or more:
    ``tf.distribute.MirroredStrategy`` on TensorFlow, ``keras.distribution.DataParallel`` on
    JAX. PyTorch: ``InputError`` (Keras has no distribution for it). ``batch_size`` must split
    evenly over the devices."""
    import keras

    if mode == "off":
        return DataParallel("off", "none")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
    elif backend == "jax":
        devices = [str(d) for d in keras.distribution.list_devices()]
    else:
        raise InputError(
            f"train.distribute=auto: data-parallel training is not supported on the {backend} "
            "backend (Keras distributes only TensorFlow and JAX): set train.distribute=off "
            "(--distribute off), or use KERAS_BACKEND=tensorflow or jax"
        )
    if len(devices) < 2:
        log(f"train.distribute=auto: one device ({', '.join(devices)}), training on it alone")
        return DataParallel("auto", "none", tuple(devices))
    if batch_size % len(devices):
        raise InputError(
            f"data.batch_size={batch_size} does not split evenly over the {len(devices)} "
            f"devices of train.distribute=auto: use a multiple of {len(devices)}"
        )
    if backend == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        used = tuple(strategy.extended.worker_devices)
        result = DataParallel("auto", "MirroredStrategy", used, strategy.scope)
    else:
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        used = tuple(str(d) for d in distribution.device_mesh.devices.reshape(-1))
        result = DataParallel("auto", "DataParallel", used, distribution.scope, distribution.scope)
    log(
        f"data parallel ({result.strategy}) over {len(devices)} devices: {', '.join(devices)}; "
        f"global batch {batch_size} = {batch_size // len(devices)} per device"
    )
    return result


# ---------------------------------------------------------------- result


@dataclass
class TrainResult:
    out: Path
    model_path: Path
    best_epoch: int
    best_valid_auc: float
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    resumed_from_epoch: int = 0


def _read_state(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT_DIR / "state.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _atomic_save_keras(obj, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    obj.save(tmp)
    os.replace(tmp, path)


def _card(cfg: RunConfig, metrics: dict[str, Any]):
    from wsi_saliency.model.io import ModelCard, software_versions

    return ModelCard.for_config(
        cfg.model,
        config=cfg.to_dict(),
        metrics=metrics,
        seed=cfg.train.seed,
        versions=software_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def run_folder_status(out: Path) -> str:
    """``empty`` (absent or empty), ``finished``, ``resumable`` (an unfinished run with its
    checkpoint) or ``other`` (files but no checkpoint). A run is finished when its state says
    so or, without a state, when it holds ``model.keras`` and ``metrics.json``."""
    out = Path(out)
    if not out.is_dir() or not any(out.iterdir()):
        return "empty"
    state = _read_state(out)
    if state is not None:
        return "finished" if state.get("finished") else "resumable"
    if (out / "model.keras").is_file() and (out / "metrics.json").is_file():
        return "finished"
    return "other"


def _finished_error(out: Path, *, resume: bool) -> InputError:
    if resume:
        what = f"{out} holds a finished run, nothing to resume"
    else:
        what = f"output folder {out} already holds a finished run"
    return InputError(f"{what}: pass --overwrite to train again, or another --out")


def check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one before any work is done. The hint names only
    what would work: ``--resume`` for an unfinished run with a checkpoint, else ``--overwrite``
    or another ``--out``."""
    from wsi_saliency.outputs.atomic import ensure_writable_dir

    out = Path(out)
    status = run_folder_status(out)
    if status != "empty" and not overwrite:
        if status == "finished":
            raise _finished_error(out, resume=resume)
        if status == "other":
            raise InputError(
                f"{'--resume: ' if resume else ''}output folder {out} holds files but no run "
                "checkpoint to resume from: pass --overwrite to start again, or another --out"
            )
        if not resume:
            raise InputError(
                f"output folder {out} already holds an unfinished run: pass --resume to "
                "continue it, --overwrite to start again, or another --out"
            )
    ensure_writable_dir(out)


@dataclass
class _RunData:
    """The opened splits of a run and how an epoch walks them."""

    data_dir: Path
    train_split: Any
    valid_split: Any
    valid_view: Any  # the whole valid split, or its first ``train.validation_steps`` batches
    batch_size: int
    steps: int

    def close(self) -> None:
        self.train_split.close()
        self.valid_split.close()


@dataclass
class _Start:
    """Where training starts: a new model, or the checkpoint of an interrupted run."""

    wrapper: Any  # augmentation + model, what ``fit`` trains
    model: Any  # the model that is saved (the wrapper's last layer)
    epoch: int  # epochs already done
    best: dict[str, Any]
    state: dict[str, Any] | None
    twin: Any = None  # what validation scores when not ``model`` (DataParallel.validation_twin)


def open_run_data(cfg: RunConfig, log: Callable[[str], None] = print) -> _RunData:
    """Stage 1: the train and valid splits (converted to PCam HDF5 once when needed)."""
    from wsi_saliency.data.folders import ensure_pcam
    from wsi_saliency.data.pcam import open_pcam

    data_dir = ensure_pcam(cfg.data.path, cache_dir=cfg.data.cache_dir)
    train_split = open_pcam(data_dir, cfg.data.train_split)
    valid_split = open_pcam(data_dir, cfg.data.valid_split)
    log(f"data {data_dir}: {train_split.n} train / {valid_split.n} valid patches")
    bs = cfg.data.batch_size
    if train_split.n < bs:
        raise InputError(
            f"the train split of {cfg.data.path} has {train_split.n} patches, fewer than "
            f"data.batch_size={bs}: lower the batch size"
        )
    valid_view = valid_split
    if cfg.train.validation_steps and cfg.train.validation_steps * bs < valid_split.n:
        valid_view = _FirstRows(valid_split, cfg.train.validation_steps * bs)
    steps = cfg.train.steps_per_epoch or train_split.n // bs
    return _RunData(data_dir, train_split, valid_split, valid_view, bs, steps)


def start_model(cfg: RunConfig, out: Path, state: dict | None, log=print) -> _Start:
    """Stage 2: build the model and its augmentation wrapper, or load the checkpoint that
    ``state`` (an unfinished run's ``state.json``) commits. Variables are created here: a
    distribution scope wraps this stage and ``compile_phase``."""
    import keras

    from wsi_saliency.model.build import build_model

    if state and not state.get("finished"):
        best = {
            "auc": float(state["best_auc"]),
            "epoch": int(state["best_epoch"]),
            "loss": float(state.get("best_loss") or np.inf),
        }
        wrapper = keras.saving.load_model(out / CHECKPOINT_DIR / "last.keras", safe_mode=True)
        log(f"resuming {out} after epoch {int(state['epoch'])} (best valid AUC {best['auc']:.4f})")
        return _Start(wrapper, wrapper.layers[-1], int(state["epoch"]), best, state)
    model = build_model(cfg.model)
    augment = make_augmenter(cfg.augment, cfg.train.seed)
    inputs = keras.Input((cfg.model.patch_size,) * 2 + (3,), name="patch_rgb")
    wrapper = keras.Model(inputs, model(augment(inputs)), name="train_wrapper")
    return _Start(wrapper, wrapper.layers[-1], 0, {"auc": -1.0, "epoch": -1}, None)


def compile_phase(cfg: RunConfig, start: _Start, phase: Phase) -> int:
    """Stage 3: make the phase's layers trainable and compile the wrapper; returns the number
    of trainable backbone layers. Frozen BatchNorm keeps pretrained statistics while
    fine-tuning; a network trained from scratch must learn its statistics."""
    import keras

    from wsi_saliency.backend import jit_flag
    from wsi_saliency.model.build import set_trainable

    n_train = set_trainable(
        start.model,
        backbone_from=phase.backbone_from,
        freeze_batchnorm=cfg.train.freeze_batchnorm and phase.name != "full",
    )
    start.wrapper.compile(
        optimizer=keras.optimizers.Adam(phase.lr),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc", num_thresholds=500),
        ],
        jit_compile=jit_flag(cfg.train.jit_compile),
    )
    return n_train


def fit_phase(
    cfg: RunConfig,
    out: Path,
    start: _Start,
    data: _RunData,
    phase: Phase,
    index: int,
    epochs: tuple[int, int],
    history: list,
    *,
    callbacks: tuple = (),
    log: Callable[[str], None] = print,
) -> int:
    """Stage 4: train epochs ``[first, end)`` of a compiled phase, validating, checkpointing
    and keeping the best model after each; returns the epochs run (fewer on early stopping)."""
    first, end = epochs
    phase_callbacks = _callbacks(
        cfg,
        out,
        phase,
        end,
        start.best,
        history,
        index,
        start.wrapper,
        start.model,
        callbacks,
        valid=data.valid_view,
        precise_bn_split=data.train_split,
        twin=start.twin,
        log=log,
    )
    train_batches = prefetch(
        epoch_batches(
            data.train_split,
            data.batch_size,
            shuffle=True,
            seed=cfg.train.seed,
            buffer_chunks=cfg.data.shuffle_buffer_chunks,
            first_epoch=first,
        )
    )
    try:
        fit = start.wrapper.fit(
            train_batches,
            steps_per_epoch=data.steps,
            epochs=end,
            initial_epoch=first,
            callbacks=phase_callbacks,
            verbose=cfg.train.verbose,
            shuffle=False,
        )
    finally:
        train_batches.close()
    return len(fit.history.get("loss", []))


def run_phases(
    cfg: RunConfig,
    out: Path,
    start: _Start,
    data: _RunData,
    history: list,
    *,
    callbacks: tuple = (),
    log: Callable[[str], None] = print,
    parallel: DataParallel | None = None,
) -> None:
    """Stages 3 and 4 for every phase still to run (all of them, or the rest after a resume),
    compiled and trained in the scopes of ``parallel`` (``train.distribute``)."""
    parallel = parallel or DataParallel("off", "none")
    phases = plan_phases(cfg)
    epoch_base = 0
    for index, phase in enumerate(phases):
        phase_end = epoch_base + phase.epochs
        if start.epoch >= phase_end:
            epoch_base = phase_end
            continue
        if not (start.state is not None and start.epoch > epoch_base):  # not resumed mid-phase
            with parallel.scope():
                n_train = compile_phase(cfg, start, phase)
            log(
                f"phase {index + 1}/{len(phases)} '{phase.name}': {phase.epochs} epochs at "
                f"lr {phase.lr:g}, {n_train} trainable backbone layers"
            )
        first = max(start.epoch, epoch_base)
        with parallel.fit_scope():
            ran = fit_phase(
                cfg,
                out,
                start,
                data,
                phase,
                index,
                (first, phase_end),
                history,
                callbacks=callbacks,
                log=log,
            )
        if first + ran < phase_end:
            log(
                f"early stopping after epoch {first + ran}: valid AUC did not improve for "
                f"{cfg.train.early_stopping_patience} epochs"
            )
            return
        epoch_base = phase_end


def finish_run(
    cfg: RunConfig,
    out: Path,
    start: _Start,
    data: _RunData,
    history: list,
    run_info: dict[str, Any],
    t0: float,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Stage 5: the kept model's final metrics on the whole valid split, its card, and the run
    records (``metrics.json``, ``run.json``, the finished ``state.json``).

    The epoch's validation used the same function on the same weights (BatchNorm statistics
    included, re-estimated before that validation), so for a whole-split validation these are
    the numbers logged for the kept epoch."""
    from wsi_saliency.evaluation import evaluate_split
    from wsi_saliency.model.io import load_model, save_model

    best = start.best
    if best["epoch"] < 0:
        raise InputError(f"{out}: no epoch finished, so there is no model to keep")
    best_model, best_card = load_model(out / "model.keras")
    kept_epoch = best["epoch"] + 1
    if _card_epoch(best_card) != kept_epoch:
        raise WsiSaliencyError(
            f"{out / 'model.keras'} holds epoch {_card_epoch(best_card)}, not the best "
            f"epoch {kept_epoch} recorded in {out / CHECKPOINT_DIR / 'state.json'}: "
            "train again with --overwrite"
        )
    metrics = evaluate_split(best_model, data.valid_split, batch_size=data.batch_size).metrics
    metrics["best_epoch"] = kept_epoch
    logged = next((h for h in history if int(h.get("epoch", -1)) == kept_epoch), {})
    log(_kept_epoch_line(kept_epoch, metrics, logged, data.valid_view.n, data.valid_split.n))
    wall = time.perf_counter() - t0
    save_model(
        best_model, _card(cfg, {**metrics, "split": cfg.data.valid_split}), out / "model.keras"
    )
    _write_json_atomic(out / "metrics.json", {"split": cfg.data.valid_split, **metrics})
    _write_json_atomic(
        out / "run.json",
        {
            "data": str(cfg.data.path),
            "data_hdf5": str(data.data_dir),
            "n_train": data.train_split.n,
            "n_valid": data.valid_split.n,
            "phases": [p.__dict__ for p in plan_phases(cfg)],
            "epochs_run": len(history),
            "steps_per_epoch": data.steps,
            "batch_size": data.batch_size,
            "seed": cfg.train.seed,
            **run_info,
            "wall_s": round(wall, 1),
            "resumed_from_epoch": start.epoch if start.state else 0,
            "versions": _card(cfg, {}).versions,
        },
    )
    state_now = _read_state(out) or {}
    _write_json_atomic(out / CHECKPOINT_DIR / "state.json", {**state_now, "finished": True})
    return TrainResult(
        out,
        out / "model.keras",
        kept_epoch,
        float(metrics["auc"]),
        metrics,
        history,
        wall,
        start.epoch if start.state else 0,
    )


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    callbacks: tuple = (),
) -> TrainResult:
    """Train on ``cfg.data.path`` and write the run folder ``out`` (see module docstring).

    With ``resume`` the run continues from ``out/checkpoints`` (weights, optimizer state,
    epoch, phase and best valid AUC) after an interruption. The stages: ``open_run_data``,
    ``start_model``, then per phase ``compile_phase`` and ``fit_phase``, then ``finish_run``.
    """
    import keras

    from wsi_saliency.backend import configure_precision, device_info

    out = Path(out)
    t0 = time.perf_counter()
    state = _read_state(out) if resume else None
    if resume and run_folder_status(out) == "finished":
        raise _finished_error(out, resume=True)
    device = device_info()
    policy = configure_precision(cfg.train.mixed_precision, device=device)
    keras.utils.set_random_seed(cfg.train.seed)
    log(f"{device.describe()}; dtype policy {policy}")
    parallel = data_parallel(cfg.train.distribute, cfg.data.batch_size, log)

    data = open_run_data(cfg, log)
    try:
        for folder in (out, out / "logs", out / CHECKPOINT_DIR):
            folder.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg))
        # The variables are created (and compiled, and trained) in the distribution's scopes;
        # the model file is saved as a single-device run saves it; finish_run is single-device.
        with parallel.scope():
            start = start_model(cfg, out, state, log)
        start.twin = parallel.validation_twin(start.model)
        # Rows for epochs the state does not hold (interrupted before it was written) are
        # dropped: those epochs run again and the CSV logger appends them once.
        history = _truncate_history(out / "logs" / "history.csv", start.epoch)
        if start.epoch:
            _republish_best(cfg, out, start.model, start.best, start.epoch, history, log)
        run_phases(cfg, out, start, data, history, callbacks=callbacks, log=log, parallel=parallel)
        run_info = {
            "dtype_policy": policy,
            "devices": device.describe(),
            "distribute": parallel.record(data.batch_size),
        }
        return finish_run(cfg, out, start, data, history, run_info, t0, log)
    finally:
        data.close()


def _truncate_history(path: Path, epochs: int) -> list[dict[str, float]]:
    """Keep the rows of ``logs/history.csv`` for the first ``epochs`` epochs (its ``epoch``
    column counts from 0), rewritten in place; the file is removed when ``epochs`` is 0.
    Returns the kept rows with ``epoch`` counted from 1, as ``history`` holds them."""
    import csv
    import io

    if not path.is_file():
        return []
    if epochs <= 0:
        path.unlink()
        return []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if not header or "epoch" not in header:
        return []
    col = header.index("epoch")
    kept = [r for r in rows if len(r) > col and r[col] and float(r[col]) < epochs]
    if len(kept) != len(rows):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(kept)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, path)
    history = []
    for r in kept:
        row = {k: float(v) for k, v in zip(header, r, strict=False) if v not in ("", None)}
        row["epoch"] = row["epoch"] + 1
        history.append(row)
    return history


def _card_epoch(card) -> int | None:
    """The epoch whose model a ``model.keras`` holds (during training: ``epoch``; after the
    final evaluation: ``best_epoch``)."""
    return card.metrics.get("epoch", card.metrics.get("best_epoch"))


def _republish_best(cfg, out: Path, model, best: dict, epochs_done: int, history, log) -> None:
    """On resume: make ``model.keras`` the best epoch's model again if an interruption fell
    between committing that epoch (``state.json``) and writing ``model.keras``; ``model`` is
    the inner model of ``last.keras``, i.e. of the last committed epoch."""
    from wsi_saliency.model.io import read_card, save_model

    path = out / "model.keras"
    kept_epoch = best["epoch"] + 1
    try:
        held = _card_epoch(read_card(path))
    except InputError:
        held = None
    if held == kept_epoch:
        return
    if kept_epoch != epochs_done:
        raise InputError(
            f"cannot resume {out}: model.keras holds epoch {held}, not the best epoch "
            f"{kept_epoch} recorded in {out / CHECKPOINT_DIR / 'state.json'}, and that epoch's "
            "weights are gone; pass --overwrite to train again"
        )
    row = next((h for h in history if h.get("epoch") == kept_epoch), {})
    logged = {k: row[k] for k in ("val_auc", "val_accuracy", "val_loss") if k in row}
    save_model(model, _card(cfg, {"epoch": kept_epoch, **logged}), path)
    log(f"restored {path} from the checkpoint of epoch {kept_epoch} (the best)")


def _kept_epoch_line(epoch: int, metrics: dict, logged: dict, n_validated: int, n: int) -> str:
    """The log line on the kept model: its final metrics and, if they differ from what was
    logged for its epoch, exactly what differs and why."""
    final = f"valid AUC {metrics['auc']:.4f}, accuracy {metrics['accuracy']:.4f}"
    then = (logged.get("val_auc"), logged.get("val_accuracy"))
    now = (metrics["auc"], metrics["accuracy"])

    def same(a, b) -> bool:
        return a == b or (a is not None and bool(np.isnan(a) and np.isnan(b)))

    if all(same(a, b) for a, b in zip(then, now, strict=True)):
        return f"kept epoch {epoch}: {final} on {n} patches, as logged for that epoch"
    if None in then:
        return f"kept epoch {epoch}: {final} on {n} patches"
    if n_validated < n:
        why = f"epochs were validated on the first {n_validated} of the {n} valid patches"
    else:
        why = "the saved model scores differently from the model validated at that epoch"
    return (
        f"kept epoch {epoch}: {final} on all {n} valid patches; logged for that epoch: "
        f"AUC {then[0]:.4f}, accuracy {then[1]:.4f} ({why})"
    )


def _tensorboard_available() -> bool:
    """Keras' TensorBoard callback writes through tf.summary: it needs tensorflow + tensorboard."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard"))


def _callbacks(
    cfg,
    out,
    phase,
    phase_end,
    best,
    history,
    phase_index,
    wrapper,
    model,
    extra=(),
    *,
    valid,
    precise_bn_split=None,
    twin=None,
    log: Callable[[str], None] = print,
):
    import keras

    from wsi_saliency.evaluation import evaluate_split

    class Validate(keras.callbacks.Callback):
        """After each epoch: re-estimate BatchNorm statistics on raw train batches (precise BN),
        then score ``valid`` with ``evaluate_split``, the function of the final metrics, and
        put ``val_loss``, ``val_accuracy`` and ``val_auc`` into the epoch's logs for the
        callbacks after it. (Keras' own validation of a Python generator replays the batches
        it peeked at and drops those it read ahead, so from the second epoch on it does not
        see the valid split once; and its AUC is a 500-threshold approximation.)"""

        told = False

        def on_epoch_end(self, epoch, logs=None):
            if cfg.train.precise_bn_batches and precise_bn_split is not None:
                n_layers, n_batches = recalibrate_batchnorm(
                    model,
                    precise_bn_split,
                    cfg.data.batch_size,
                    cfg.train.precise_bn_batches,
                    seed=cfg.train.seed,
                )
                if n_layers and not Validate.told:
                    Validate.told = True
                    short = (
                        f" (all the train split has; train.precise_bn_batches="
                        f"{cfg.train.precise_bn_batches})"
                        if n_batches < cfg.train.precise_bn_batches
                        else ""
                    )
                    log(
                        f"re-estimating {n_layers} BatchNorm layers on {n_batches} un-augmented "
                        f"train batches{short} before each validation"
                    )
            scored = model
            if twin is not None:  # data parallel on TensorFlow: a single-device copy
                twin.set_weights(model.get_weights())
                scored = twin
            result = evaluate_split(scored, valid, batch_size=cfg.data.batch_size)
            if logs is not None:
                logs.update(
                    val_loss=binary_cross_entropy(result.labels, result.probs),
                    val_accuracy=float(result.metrics["accuracy"]),
                    val_auc=float(result.metrics["auc"]),
                )

    class KeepBest(keras.callbacks.Callback):
        """Record the epoch and keep the best model by valid AUC: ``last.keras`` (the whole
        training state), then ``state.json`` (which commits the epoch), then ``model.keras``
        when valid AUC improved (see the module docstring for interruptions)."""

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            logs["lr"] = float(keras.ops.convert_to_numpy(wrapper.optimizer.learning_rate))
            history.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
            auc = float(logs.get("val_auc", -1.0))
            if np.isnan(auc):  # a valid split of one class has no AUC: rank by loss alone
                auc = -0.5
            loss = float(logs.get("val_loss", np.inf))
            # Best by valid AUC; among equal AUCs (e.g. several at 1.0) the lower valid loss.
            improved = auc > best["auc"] or (auc == best["auc"] and loss < best.get("loss", np.inf))
            if improved:
                best.update(auc=auc, epoch=epoch, loss=loss)
            _atomic_save_keras(wrapper, out / CHECKPOINT_DIR / "last.keras")
            _write_json_atomic(
                out / CHECKPOINT_DIR / "state.json",
                {
                    "epoch": epoch + 1,
                    "phase": phase.name,
                    "phase_index": phase_index,
                    "best_auc": best["auc"],
                    "best_epoch": best["epoch"],
                    "best_loss": best.get("loss"),
                    "finished": False,
                },
            )
            if improved:
                from wsi_saliency.model.io import save_model

                card = {
                    "epoch": epoch + 1,
                    **{k: logs[k] for k in ("val_auc", "val_accuracy", "val_loss") if k in logs},
                }
                save_model(model, _card(cfg, card), out / "model.keras")

    cbs: list = [Validate()]
    if cfg.train.early_stopping_patience:
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor="val_auc",
                mode="max",
                patience=cfg.train.early_stopping_patience,
                restore_best_weights=False,
            )
        )
    if cfg.train.lr_schedule == "plateau":
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_auc", mode="max", factor=0.5, patience=1, min_lr=phase.lr / 100
            )
        )
    elif cfg.train.lr_schedule == "cosine":
        start = phase_end - phase.epochs

        def cosine(epoch, lr):
            t = (epoch - start) / max(1, phase.epochs)
            return float(phase.lr * 0.5 * (1 + np.cos(np.pi * t)))

        cbs.append(keras.callbacks.LearningRateScheduler(cosine))
    # Loggers and the checkpoint run after the schedules so they see this epoch's learning rate.
    cbs.append(keras.callbacks.CSVLogger(str(out / "logs" / "history.csv"), append=True))
    if _tensorboard_available():
        cbs.append(
            keras.callbacks.TensorBoard(str(out / "logs" / "tensorboard"), write_graph=False)
        )
    cbs.append(KeepBest())
    return cbs + list(extra)
