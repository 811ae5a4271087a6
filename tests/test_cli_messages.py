"""What a user reads: --help, and one short line for each kind of bad input (issue 13)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_card
from typer.testing import CliRunner

from wsi_saliency.cli import app

runner = CliRunner()

COMMANDS = [
    [],
    ["train"],
    ["evaluate"],
    ["convert"],
    ["inspect-data"],
    ["info"],
    ["scan"],
    ["demo"],
    ["export"],
    ["review"],
    ["serve"],
    ["evaluate-slides"],
    ["download"],
    ["download", "pcam"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_shows_readable_metavars(command):
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0, res.output
    # No Python types (<list[str]>, <path>, <int>) and no braces around required arguments.
    assert not re.search(r"<(list\[|path|int|float|str|bool)", res.output), res.output
    assert not re.search(r"\{[a-z_]+\}", res.output), res.output


def test_scan_help_names_slides_and_key_value():
    out = runner.invoke(app, ["scan", "--help"]).output
    assert "Usage: wsi-saliency scan [OPTIONS] SLIDE..." in out
    assert "--set KEY=VALUE" in out and "--model PATH" in out and "--batch-size INTEGER" in out


def test_an_option_error_names_its_flag(tiny_model, tmp_path):
    res = runner.invoke(
        app, ["scan", "x.svs", "--model", str(tiny_model), "--batch-size", "0", "-o", "o"]
    )
    assert res.exit_code == 2
    assert res.output.strip() == "error: scan.batch_size (--batch-size) must be >= 1"
    res = runner.invoke(app, ["scan", "x.svs", "--model", str(tiny_model), "--slide-mpp", "-1"])
    assert res.exit_code == 2 and "(--slide-mpp)" in res.output


def test_an_empty_slide_file_is_called_empty(tiny_model, tmp_path):
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    res = runner.invoke(
        app, ["scan", str(empty), "--model", str(tiny_model), "-o", str(tmp_path / "o"), "-q"]
    )
    assert res.exit_code == 1
    assert f"slide {empty} is empty (0 bytes)" in res.output
    assert "not a supported slide format" not in res.output


def _foreign_model(path: Path, output_units: int) -> Path:
    """A plain Keras classifier (not built by train) saved with a tiny model's card."""
    import keras

    from wsi_saliency.model.io import save_model

    inp = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, name="tiny_stage4_out")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(output_units, activation="softmax", name="logit")(x)
    return save_model(keras.Model(inp, out), tiny_card(), path)


def test_a_model_that_does_not_match_its_card_gets_one_line(tmp_path):
    """evaluate and scan of a two-output model with a copied card: one short line, exit 2."""
    model = _foreign_model(tmp_path / "foreign.keras", 2)
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "pcam"
    for args in (
        ["evaluate", str(model), str(sample), "--split", "valid"],
        [
            "scan",
            str(sample.parent / "slide" / "sample_slide.tif"),
            "-m",
            str(model),
            "-q",
            "-o",
            str(tmp_path / "scan"),
        ],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code in (1, 2), res.output
        lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert lines, res.output
        assert "does not match its card" in lines[0] and "output shape (None, 2)" in lines[0]
        assert "Traceback" not in res.output


def test_a_missing_gradcam_layer_is_one_short_line(tiny_model, tmp_path):
    slide = Path(__file__).resolve().parents[1] / "sample_data" / "slide" / "sample_slide.tif"
    res = runner.invoke(
        app,
        [
            "scan",
            str(slide),
            "-m",
            str(tiny_model),
            "--gradcam-layer",
            "nope",
            "-q",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code != 0
    err = [ln for ln in res.output.splitlines() if "nope" in ln]
    assert err and len(err[0]) < 250, res.output
    assert "the last convolutional one 'tiny_stage4_out'" in err[0]


def test_train_without_a_backend_names_the_extras(tmp_path):
    """With no Keras backend importable, train says which extra to install, in one line."""
    code = (
        "import sys\n"
        "sys.modules.update(tensorflow=None, jax=None, torch=None)  # as if not installed\n"
        "from wsi_saliency.cli import main\n"
        "sys.argv = ['wsi-saliency', 'train', '--out', sys.argv[1], '--head-epochs', '1']\n"
        "main()\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert ".[cpu]" in lines[0] and ".[jax]" in lines[0] and "tensorflow" in lines[0]


def test_a_non_latin_slide_name_draws_without_glyph_warnings(tmp_path):
    import warnings

    import numpy as np

    from wsi_saliency.outputs.colour import PROBABILITY_SCALE
    from wsi_saliency.outputs.overlays import drawable, write_heatmap_png

    overview = np.full((40, 60, 3), 230, np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_heatmap_png(
            tmp_path / "h.png",
            overview,
            (4.0, 4.0),
            np.full((5, 7), 0.5, np.float32),
            32.0,
            title="スライド_01.svs: P(metastasis)",
            scale=PROBABILITY_SCALE,
        )
    assert not [w for w in caught if "Glyph" in str(w.message)]
    assert (tmp_path / "h.png").stat().st_size > 0
    assert drawable("スライド_01.svs").endswith("_01.svs")


EXIT_SCRIPT = """
import atexit, sys, threading, time
from wsi_saliency.cli import main
atexit.register(lambda: print("atexit handler ran", flush=True))
class Global:
    def __del__(self):  # runs in the interpreter's teardown, which the fast exit skips
        print("teardown ran", flush=True)
kept = Global()
if sys.argv[1] == "thread":  # a running thread is waited for, as a normal exit does
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread finished"))).start()
print("buffered before exit", end="")  # no newline, no flush: exit must flush it
sys.argv = ["wsi-saliency", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(
    ("mode", "args", "code"),
    [("plain", ["--version"], 0), ("plain", ["scan"], 2), ("thread", ["--version"], 0)],
)
def test_the_console_script_exits_at_once_with_its_status_and_output(mode, args, code):
    """main() skips the interpreter's teardown, yet keeps the exit status, flushes what was
    printed, runs the atexit handlers, and waits for a running thread."""
    res = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, mode, *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == code, res.stderr
    assert res.stdout.startswith("buffered before exit") and "atexit handler ran" in res.stdout
    assert ("wsi-saliency " in res.stdout) is (code == 0)
    assert ("thread finished" in res.stdout) is (mode == "thread")
    assert ("teardown ran" in res.stdout) is (mode == "thread")
    if code == 2:
        assert "Missing argument" in res.stderr or "Usage" in res.stderr


def test_commands_do_not_print_tensorflows_import_notices():
    """TensorFlow 2.2x writes absl and oneDNN notices on every import, whatever
    TF_CPP_MIN_LOG_LEVEL says; the command line holds them back (not with --debug)."""
    from wsi_saliency.backend import drop_import_noise

    res = subprocess.run(
        [sys.executable, "-m", "wsi_saliency", "info"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert res.returncode == 0, res.stderr
    assert "absl::InitializeLog" not in res.stderr and "oneDNN" not in res.stderr, res.stderr
    noise = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1 1 port.cc:153] oneDNN custom operations are on. You may see ...\n"
    )
    assert drop_import_noise(noise + "a real warning\n" + noise) == "a real warning\n"
