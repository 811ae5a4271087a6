"""One model file, three Keras backends: the same probabilities and Grad-CAM maps.

Each backend runs in its own process (Keras picks its backend at import). Backends that are
not installed are skipped with a reason; CI installs all three (see README)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from wsi_saliency.config import ModelConfig

SCRIPT = """
import sys, numpy as np
from wsi_saliency.model.io import load_model
from wsi_saliency.model.gradcam import GradCam
model, card = load_model(sys.argv[1])
x = np.load(sys.argv[2])
prob, cam = GradCam(model, card.gradcam_layer, card.logit_layer)(x)
np.savez(sys.argv[3], prob=prob, cam=cam)
"""

BACKENDS = ("tensorflow", "jax", "torch")


def _run(backend, model_path, patches_path, out_path):
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_path), str(patches_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out_path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import ModelCard, save_model

    folder = tmp_path_factory.mktemp("backends")
    cfg = ModelConfig(backbone="tiny", weights="none")
    model = build_model(cfg)
    # Non-trivial head weights so that Grad-CAM maps are not all zero.
    w, b = model.get_layer("logit").get_weights()
    model.get_layer("logit").set_weights([np.linspace(-1, 1, w.size).reshape(w.shape), b])
    path = save_model(model, ModelCard.for_config(cfg), folder / "model.keras")
    patches = np.random.default_rng(0).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    np.save(folder / "x.npy", patches)
    reference = _run("tensorflow", path, folder / "x.npy", folder / "tensorflow.npz")
    return path, folder, reference


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_same_model_file_same_results_on_every_backend(backend, saved):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install -e '.[{backend}]')")
    path, folder, reference = saved
    other = _run(backend, path, folder / "x.npy", folder / f"{backend}.npz")
    np.testing.assert_allclose(other["prob"], reference["prob"], atol=1e-4)
    assert reference["cam"].max() > 0
    scale = float(reference["cam"].max())
    np.testing.assert_allclose(other["cam"], reference["cam"], atol=1e-3 * scale)


def test_gradcam_is_compiled_where_it_was_measured_faster():
    from wsi_saliency.backend import DeviceInfo, gradcam_jit

    cpu = {b: DeviceInfo(b, "x", ()) for b in ("tensorflow", "jax", "torch")}
    gpu = {b: DeviceInfo(b, "x", ("GPU:0",)) for b in ("tensorflow", "jax", "torch")}
    # auto: JAX always (uncompiled runs op by op); TensorFlow's XLA only on a GPU
    assert [gradcam_jit("auto", cpu[b]) for b in cpu] == [False, True, False]
    assert [gradcam_jit("auto", gpu[b]) for b in gpu] == [True, True, False]
    for device in (*cpu.values(), *gpu.values()):
        assert gradcam_jit("on", device) is True and gradcam_jit("off", device) is False


def test_mixed_precision_on_a_cpu_is_bfloat16_for_scans_where_the_cpu_has_it(monkeypatch):
    import keras

    from wsi_saliency import backend
    from wsi_saliency.errors import InputError

    cpu = backend.DeviceInfo("tensorflow", "x", ())
    try:
        monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: True)
        assert backend.configure_precision("on", device=cpu, cpu_bfloat16=True) == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        assert backend.configure_precision("auto", device=cpu, cpu_bfloat16=True) == "float32"
        with pytest.raises(InputError, match="slower"):  # training: not on a CPU
            backend.configure_precision("on", device=cpu)
        monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: False)
        with pytest.raises(InputError, match="AVX512_BF16 or AMX"):
            backend.configure_precision("on", device=cpu, cpu_bfloat16=True)
    finally:
        keras.config.set_dtype_policy("float32")
