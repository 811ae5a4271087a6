"""Benchmark: ``wsi-saliency scan`` against WSInfer and TIAToolbox, timed as a user times them.

Each tool runs as its own process, from start to exit, on the same slides, with the same
architecture (ResNet50 with random weights, built by each tool's own library) at PCam's
96 px at 0.972 um/px, batch 64:

- ``ours-gradcam`` / ``ours-gradcam-patches`` / ``ours-no-gradcam``: ``wsi-saliency scan SLIDE
  --model resnet50.keras --out DIR --quiet --batch-size 64`` (a Keras ResNet50 saved with its
  card) with the default dense Grad-CAM slide map, with ``--set gradcam_map=patches`` (the
  map stitched from the per-patch maps of the scoring pass), or ``--no-gradcam``; the
  ``-bf16`` runs add ``--set mixed_precision=on`` (bfloat16, opt-in, on a CPU that has it;
  skipped elsewhere), as WSInfer's ``--speedup`` is its opt-in;
- ``wsinfer`` / ``wsinfer-speedup``: ``wsinfer run --wsi-dir --results-dir --model-path
  --config --batch-size 64 [--speedup]`` with torchvision's ResNet50 (a one-unit head)
  exported as TorchScript and a local model config (Resize 96, ToTensor, Normalize);
  offline (``HF_HUB_OFFLINE=1`` and an empty local model registry, created if absent);
- ``tiatoolbox``: ``PatchPredictor(model=CNNModel("resnet50", num_classes=2), weights=...,
  batch_size=64)`` run on the slide in WSI mode with an ``IOPatchPredictorConfig`` at
  0.972 um/px, 96 x 96 patches, stride 96, zarr output (a short driver script).

Every tool lives in its own virtual environment, ``CACHE/peers/<tool>/``; ``--setup``
creates them with ``pip install -e '<this repo>[cpu]'`` (ours, as the README installs it),
``pip install wsinfer==0.6.1 'zarr<3' 'tiffslide<3'`` and ``pip install tiatoolbox==2.1.3``,
as a user would (torch from PyPI, a CUDA build that runs on the CPU
here: torchvision's PyPI wheels need it, and TIAToolbox pins torch < 2.13). A peer whose
environment is missing is skipped with the reason; ours without its own runs in this
interpreter (recorded under ``conditions``). ``CACHE`` is ``$WSI_SALIENCY_CACHE`` or
``~/.cache/wsi-saliency``.

Slides: ``../shared/data/slides/CMU-1-Small-Region.svs`` (2,220 x 2,967 px at 0.499 um/px)
and the same region tiled 4 x 4 into an 8,880 x 11,868 px SVS-like pyramidal TIFF (Aperio
description with MPP, JPEG tiles of 240 px, levels /4 and /16, a thumbnail page), written
once to ``CACHE/bench-slides/``.

Rounds are interleaved (every tool on every slide, then the next round, with the order of the
tools rotated each round); one untimed warm-up run per tool comes first. Each run records the
wall time from process start to exit, the CPU time of the process tree, the load average, the
patches the tool scored, and phase times where the tool reports them (ours: the summary's
``timings_s``; WSInfer: when each stage's banner line appeared; TIAToolbox: the driver's own
clock). "Model alone" is each tool's model on one in-memory batch of 64, in its own process:
ours with Grad-CAM (and ``predict_on_batch``), WSInfer's TorchScript plain and after its
``--speedup`` compile, TIAToolbox's compiled ``CNNModel``.

    python benchmarks/bench_peers.py --setup          # create the peers' environments (once)
    python benchmarks/bench_peers.py --rounds 3       # -> benchmarks/results/peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import (  # noqa: E402
    machine_end,
    machine_start,
    warn_if_contended_at_end,
    warn_if_contended_at_start,
    write_json_atomic,
)

CMU_SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
CACHE = Path(os.environ.get("WSI_SALIENCY_CACHE", Path.home() / ".cache" / "wsi-saliency"))
PEERS = CACHE / "peers"
WORK = CACHE / "bench-peers"
TILED_NAME = "CMU-1-Small-Region-4x4.svs"
PATCH, PATCH_MPP, BATCH = 96, 0.972, 64
TILES = 4  # the tiled slide repeats the region TILES x TILES times
TOOLS = (
    "ours-gradcam",
    "ours-gradcam-patches",
    "ours-no-gradcam",
    "ours-gradcam-bf16",
    "ours-gradcam-patches-bf16",
    "wsinfer",
    "wsinfer-speedup",
    "tiatoolbox",
)
WSINFER_PINS = ("wsinfer==0.6.1", "zarr<3", "tiffslide<3")
TIATOOLBOX_PIN = "tiatoolbox==2.1.3"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- the tiled slide


def tiled_slide(cache: Path = CACHE / "bench-slides") -> Path:
    """CMU-1-Small-Region tiled ``TILES`` x ``TILES``, as an SVS-like pyramidal TIFF: page 0
    level 0 (JPEG tiles 240 px, Aperio description with ``MPP``), page 1 a stripped thumbnail,
    then levels /4 and /16, as Aperio writes them (OpenSlide, tiffslide and tifffile all read
    it as SVS). Written once, to a hidden name, renamed when complete."""
    import openslide
    import tifffile
    from PIL import Image

    path = cache / TILED_NAME
    if path.is_file():
        return path
    with openslide.OpenSlide(str(CMU_SLIDE)) as slide:
        w, h = slide.dimensions
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        region = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    level0 = np.tile(region, (TILES, TILES, 1))
    big_h, big_w = level0.shape[:2]

    def description(extra: str) -> str:
        return (
            f"Aperio Image Library v11.2.1 \r\n{big_w}x{big_h} [0,0 {big_w}x{big_h}] {extra}"
            f"|AppMag = 20|MPP = {mpp:.4f}|Filename = {path.stem}"
        )

    def reduced(factor: int) -> np.ndarray:
        image = Image.fromarray(level0)
        return np.asarray(image.reduce(factor))

    common = dict(photometric="rgb", compression="jpeg", compressionargs={"level": 90})
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
            tw.write(
                level0,
                tile=(240, 240),
                description=description("(240x240) JPEG/RGB Q=90"),
                metadata=None,
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
                **common,
            )
            thumb = Image.fromarray(level0)
            thumb.thumbnail((768, 768))
            tw.write(
                np.asarray(thumb),
                description=description(f"-> {thumb.width}x{thumb.height}"),
                metadata=None,
                **common,
            )
            for factor in (4, 16):
                tw.write(
                    reduced(factor),
                    tile=(240, 240),
                    description=description(f"(240x240) JPEG/RGB Q=90 downsample {factor}"),
                    metadata=None,
                    **common,
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def slide_folder(slide: Path) -> Path:
    """A folder that holds only ``slide`` (a link to it): WSInfer scans a folder of slides."""
    folder = WORK / "wsi" / slide.stem
    link = folder / slide.name
    if not link.exists():
        folder.mkdir(parents=True, exist_ok=True)
        link.symlink_to(slide.resolve())
    return folder


# ---------------------------------------------------------------- environments


def venv_python(tool: str) -> Path:
    return PEERS / tool / "bin" / "python"


def ours_python() -> Path:
    """wsi-saliency's own environment as the README installs it (``pip install -e '.[cpu]'``,
    made by ``--setup``), or this interpreter where it is absent (the development
    environment: with JAX installed, importing TensorFlow takes about 0.4 s longer)."""
    python = venv_python("ours")
    return python if python.exists() else Path(sys.executable)


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", *args]
    print("  $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def setup_peers(tools: list[str], pip_args: list[str]) -> None:
    """Create ``CACHE/peers/wsinfer`` and ``CACHE/peers/tiatoolbox`` with pip, as a user
    installs each (pip's cache is reused). ``pip_args`` go to every install (e.g. an index of
    CPU builds of torch)."""
    for family, pins in (
        ("ours", ("-e", f"{REPO}[cpu]")),
        ("wsinfer", WSINFER_PINS),
        ("tiatoolbox", (TIATOOLBOX_PIN,)),
    ):
        if not any(t.startswith(family) for t in tools):
            continue
        python = venv_python(family)
        if not python.exists():
            print(f"creating {PEERS / family}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(PEERS / family)], check=True)
        _pip(python, *pins, *pip_args)


def peer_status(tool: str) -> tuple[bool, str]:
    """(available, reason): whether the peer's environment runs its library."""
    family = tool.split("-")[0]
    if family == "ours":
        if tool.endswith("-bf16"):
            res = subprocess.run(
                [
                    str(ours_python()),
                    "-c",
                    "from wsi_saliency.backend import cpu_has_bfloat16 as f; "
                    "raise SystemExit(0 if f() else 1)",
                ],
                cwd=REPO,
            )
            if res.returncode != 0:
                return False, "this CPU has no bfloat16 instructions (AVX512_BF16 or AMX)"
        return True, ""
    python = venv_python(family)
    if not python.exists():
        return False, f"no environment at {PEERS / family} (run with --setup)"
    module = "wsinfer" if family == "wsinfer" else "tiatoolbox"
    res = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True)
    if res.returncode != 0:
        return False, f"{module} does not import in {PEERS / family}: {res.stderr[-300:]}"
    return True, ""


def peer_versions(tool: str) -> dict:
    family = tool.split("-")[0]
    names = {
        "ours": ["keras", "tensorflow", "tensorflow-cpu", "openslide-python"],
        "wsinfer": ["wsinfer", "torch", "torchvision", "tiffslide", "zarr"],
        "tiatoolbox": ["tiatoolbox", "torch", "torchvision", "openslide-python", "zarr"],
    }[family]
    python = str(ours_python() if family == "ours" else venv_python(family))
    code = (
        "import importlib.metadata as m, json\n"
        f"out = {{}}\nfor n in {names!r}:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else {}


# ---------------------------------------------------------------- models

WSINFER_MODEL = textwrap.dedent(
    """
    import json, sys, torch, torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 1)
    model.eval()
    torch.jit.script(model).save(sys.argv[1])
    """
)

TIATOOLBOX_MODEL = textwrap.dedent(
    """
    import sys, torch
    from tiatoolbox.models.architecture.vanilla import CNNModel
    torch.manual_seed(0)
    torch.save(CNNModel("resnet50", num_classes=2).state_dict(), sys.argv[1])
    """
)


def our_model(folder: Path) -> Path:
    """A ``weights="none"`` Keras ResNet50 saved with its card (96 px at 0.972 um/px)."""
    path = folder / "resnet50.keras"
    if path.is_file():
        return path
    code = textwrap.dedent(
        f"""
        import keras
        from wsi_saliency.config import ModelConfig
        from wsi_saliency.model.build import build_model
        from wsi_saliency.model.io import ModelCard, save_model, software_versions
        keras.utils.set_random_seed(0)
        cfg = ModelConfig(backbone="resnet50", weights="none", patch_size={PATCH},
                          patch_mpp={PATCH_MPP})
        card = ModelCard.for_config(cfg, versions=software_versions())
        save_model(build_model(cfg), card, {str(path)!r})
        """
    )
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return path


def wsinfer_model(folder: Path) -> tuple[Path, Path]:
    """(TorchScript file, model config JSON) for ``wsinfer run --model-path --config``."""
    model, config = folder / "resnet50-wsinfer.pt", folder / "resnet50-wsinfer.json"
    if not model.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(venv_python("wsinfer")), "-c", WSINFER_MODEL, str(model)], check=True)
    config.write_text(
        json.dumps(
            {
                "spec_version": "1.0",
                "architecture": "resnet50",
                "num_classes": 1,
                "class_names": ["tumor"],
                "patch_size_pixels": PATCH,
                "spacing_um_px": PATCH_MPP,
                "transform": [
                    {"name": "Resize", "arguments": {"size": PATCH}},
                    {"name": "ToTensor"},
                    {
                        "name": "Normalize",
                        "arguments": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                    },
                ],
            },
            indent=2,
        )
    )
    return model, config


def tiatoolbox_weights(folder: Path) -> Path:
    path = folder / "resnet50-tiatoolbox.pth"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(venv_python("tiatoolbox")), "-c", TIATOOLBOX_MODEL, str(path)], check=True
        )
    return path


def wsinfer_env() -> dict:
    """WSInfer offline: an empty local model registry (written only if there is none) and
    ``HF_HUB_OFFLINE=1``, so its start-up does not ask the Hugging Face Hub for the zoo."""
    registry = Path.home() / ".wsinfer-zoo" / "wsinfer-zoo-registry.json"
    if not registry.exists():
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text(json.dumps({"models": {}}))
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


# ---------------------------------------------------------------- running a tool

TIATOOLBOX_RUN = textwrap.dedent(
    """
    import time
    t0 = time.perf_counter()
    import json, sys
    from pathlib import Path
    from tiatoolbox.models import IOPatchPredictorConfig, PatchPredictor
    from tiatoolbox.models.architecture.vanilla import CNNModel
    t_import = time.perf_counter()
    slide, weights, out, batch = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    predictor = PatchPredictor(model=CNNModel("resnet50", num_classes=2), weights=weights,
                               batch_size=batch, device="cpu", verbose=False)
    ioconfig = IOPatchPredictorConfig(
        input_resolutions=[{"units": "mpp", "resolution": %(mpp)r}],
        patch_input_shape=(%(patch)d, %(patch)d), stride_shape=(%(patch)d, %(patch)d))
    t_model = time.perf_counter()
    result = predictor.run([Path(slide)], patch_mode=False, ioconfig=ioconfig, save_dir=out,
                           overwrite=True, output_type="zarr")
    t_run = time.perf_counter()
    import zarr
    store = zarr.open(str(next(iter(result.values()))), mode="r")
    keys = sorted(store.array_keys())
    key = "probabilities" if "probabilities" in keys else keys[0]
    print("BENCH_PEERS " + json.dumps({
        "patches": int(store[key].shape[0]),
        "import_s": round(t_import - t0, 3), "model_s": round(t_model - t_import, 3),
        "run_s": round(t_run - t_model, 3), "arrays": keys}), flush=True)
    """
) % {"mpp": PATCH_MPP, "patch": PATCH}

WSINFER_MARKS = {  # a banner WSInfer prints -> the phase that begins with it
    "Running wsinfer version": "started_s",
    "Finding patch coordinates": "patching_from_s",
    "Running model inference": "inference_from_s",
    "Saving metadata about run": "inference_done_s",
    "Finished.": "finished_s",
}


def command(tool: str, slide: Path, out: Path, models: dict) -> tuple[list[str], dict | None]:
    """The command line and environment of one run of ``tool`` on ``slide`` into ``out``."""
    if tool.startswith("ours"):
        cmd = [sys.executable, "-m", "wsi_saliency", "scan", str(slide)]
        cmd += ["--model", str(models["ours"]), "--out", str(out), "--quiet"]
        cmd += ["--batch-size", str(BATCH)]
        cmd[0] = str(ours_python())
        extra = {
            "ours-no-gradcam": ["--no-gradcam"],
            "ours-gradcam-patches": ["--set", "gradcam_map=patches"],
            "ours-gradcam-bf16": ["--set", "mixed_precision=on"],
            "ours-gradcam-patches-bf16": ["--set", "gradcam_map=patches"],
        }.get(tool, [])
        if tool == "ours-gradcam-patches-bf16":
            extra += ["--set", "mixed_precision=on"]
        return cmd + extra, None
    if tool.startswith("wsinfer"):
        model, config = models["wsinfer"]
        cmd = [str(PEERS / "wsinfer" / "bin" / "wsinfer"), "run"]
        cmd += ["--wsi-dir", str(slide_folder(slide)), "--results-dir", str(out)]
        cmd += ["--model-path", str(model), "--config", str(config)]
        cmd += ["--batch-size", str(BATCH)]
        return cmd + (["--speedup"] if tool == "wsinfer-speedup" else []), wsinfer_env()
    cmd = [str(venv_python("tiatoolbox")), "-c", TIATOOLBOX_RUN, str(slide)]
    return cmd + [str(models["tiatoolbox"]), str(out), str(BATCH)], None


def run_once(tool: str, slide: Path, models: dict) -> dict:
    """One timed run, process start to exit; the patches scored and the phases reported."""
    out = WORK / "runs" / tool / slide.stem
    shutil.rmtree(out, ignore_errors=True)
    if not tool.startswith("wsinfer"):  # WSInfer makes its results folder itself
        out.parent.mkdir(parents=True, exist_ok=True)
    cmd, env = command(tool, slide, out, models)
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    marks: dict[str, float] = {}
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        now = time.perf_counter() - t0
        lines.append(line.rstrip("\n")[-400:])
        for banner, mark in WSINFER_MARKS.items():
            if tool.startswith("wsinfer") and banner in line and mark not in marks:
                marks[mark] = round(now, 2)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {
        "tool": tool,
        "slide": slide.name,
        "returncode": rc,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
        "load_1min_at_start": round(load, 2),
    }
    if rc != 0:
        row["error"] = "\n".join(lines[-25:])
        return row
    row.update(_outcome(tool, slide, out, lines, marks))
    return row


def _outcome(tool: str, slide: Path, out: Path, lines: list[str], marks: dict) -> dict:
    if tool.startswith("ours"):
        summary = json.loads((out / slide.stem / "summary.json").read_text())
        timings = summary["timings_s"]
        return {
            "patches": summary["patches_scored"],
            "phases_s": {
                **timings,
                "scan_and_outputs_s": summary.get("seconds"),
                "outputs_s": round(summary["seconds"] - timings["total_s"], 2)
                if summary.get("seconds") is not None
                else None,
            },
        }
    if tool.startswith("wsinfer"):
        csv = out / "model-outputs-csv" / f"{slide.stem}.csv"
        patches = sum(1 for _ in csv.open()) - 1
        return {"patches": patches, "phases_s": marks}
    found = [json.loads(line[len("BENCH_PEERS ") :]) for line in lines if "BENCH_PEERS " in line]
    report = found[-1]
    return {"patches": report.pop("patches"), "phases_s": report}


# ---------------------------------------------------------------- model alone

OURS_ALONE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, "benchmarks")
    from bench_scan import model_alone
    from wsi_saliency.model.io import load_model
    from wsi_saliency.model.fold import fold_batch_norm
    from wsi_saliency.backend import gradcam_jit
    model, card = load_model(sys.argv[1])
    fold_batch_norm(model)  # as the scan does (scan.fold_batch_norm)
    x = np.random.default_rng(0).integers(0, 256, (%(batch)d, %(patch)d, %(patch)d, 3), np.uint8)
    jit = gradcam_jit("auto")  # as the scan runs it
    print("BENCH_PEERS " + json.dumps({**model_alone(model, card, x, int(sys.argv[2]), jit=jit),
                                       "gradcam_compiled": jit}))
    """
) % {"batch": BATCH, "patch": PATCH}

WSINFER_ALONE = textwrap.dedent(
    """
    import json, statistics, sys, time, torch
    from wsinfer.modellib.models import jit_compile
    x = torch.rand(%(batch)d, 3, %(patch)d, %(patch)d)
    def rate(model, repeat):
        with torch.no_grad():
            t0 = time.perf_counter(); model(x); first = time.perf_counter() - t0
            model(x)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter(); model(x); times.append(time.perf_counter() - t0)
        return first, %(batch)d / statistics.median(times)
    model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
    first, plain = rate(model, int(sys.argv[2]))
    t0 = time.perf_counter(); fast = jit_compile(model); compile_s = time.perf_counter() - t0
    first_fast, speedup = rate(fast, int(sys.argv[2]))
    print("BENCH_PEERS " + json.dumps({
        "patches_per_s": round(plain, 1), "first_call_s": round(first, 3),
        "speedup_patches_per_s": round(speedup, 1), "speedup_compile_s": round(compile_s, 2),
        "speedup_first_call_s": round(first_fast, 3), "torch_threads": torch.get_num_threads()}))
    """
) % {"batch": BATCH, "patch": PATCH}

TIATOOLBOX_ALONE = textwrap.dedent(
    """
    import json, statistics, sys, time, torch
    from tiatoolbox import rcParam
    from tiatoolbox.models.architecture.utils import compile_model
    from tiatoolbox.models.architecture.vanilla import CNNModel
    from tiatoolbox.models.models_abc import load_torch_model
    model = load_torch_model(CNNModel("resnet50", num_classes=2), sys.argv[1]).eval()
    model = compile_model(model, mode=rcParam["torch_compile_mode"])
    x = torch.randint(0, 256, (%(batch)d, %(patch)d, %(patch)d, 3), dtype=torch.uint8)
    t0 = time.perf_counter(); CNNModel.infer_batch(model, x, "cpu")
    first = time.perf_counter() - t0
    CNNModel.infer_batch(model, x, "cpu")
    times = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); CNNModel.infer_batch(model, x, "cpu")
        times.append(time.perf_counter() - t0)
    print("BENCH_PEERS " + json.dumps({
        "patches_per_s": round(%(batch)d / statistics.median(times), 1),
        "first_call_s": round(first, 3), "torch_compile_mode": rcParam["torch_compile_mode"],
        "torch_threads": torch.get_num_threads()}))
    """
) % {"batch": BATCH, "patch": PATCH}


def model_alone(family: str, models: dict, repeat: int) -> dict:
    """The tool's model on one in-memory batch of ``BATCH``, in the tool's own environment."""
    if family == "ours":
        cmd = [str(ours_python()), "-c", OURS_ALONE, str(models["ours"]), str(repeat)]
    elif family == "wsinfer":
        cmd = [str(venv_python("wsinfer")), "-c", WSINFER_ALONE, str(models["wsinfer"][0])]
        cmd.append(str(repeat))
    else:
        cmd = [str(venv_python("tiatoolbox")), "-c", TIATOOLBOX_ALONE, str(models["tiatoolbox"])]
        cmd.append(str(repeat))
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    found = [line for line in res.stdout.splitlines() if line.startswith("BENCH_PEERS ")]
    if res.returncode != 0 or not found:
        return {"error": (res.stdout + res.stderr)[-1500:]}
    return json.loads(found[-1][len("BENCH_PEERS ") :])


# ---------------------------------------------------------------- summary


def summarise(runs: list[dict]) -> dict:
    """Per slide and tool: wall median / min / max, patches, CPU seconds and phases (medians)."""
    out: dict = {}
    for row in runs:
        if row.get("warmup") or row["returncode"] != 0:
            continue
        out.setdefault(row["slide"], {}).setdefault(row["tool"], []).append(row)
    summary: dict = {}
    for slide, tools in out.items():
        for tool, rows in tools.items():
            walls = [r["wall_s"] for r in rows]
            phases: dict = {}
            for r in rows:
                for k, v in (r.get("phases_s") or {}).items():
                    if isinstance(v, (int, float)):
                        phases.setdefault(k, []).append(v)
            summary.setdefault(slide, {})[tool] = {
                "runs": len(rows),
                "wall_s_median": round(statistics.median(walls), 2),
                "wall_s_min": min(walls),
                "wall_s_max": max(walls),
                "patches": sorted({r["patches"] for r in rows}),
                "cpu_s_median": round(statistics.median(r["cpu_s"] for r in rows), 2),
                "phases_s_median": {k: round(statistics.median(v), 2) for k, v in phases.items()},
            }
    return summary


def ahead(summary: dict) -> dict:
    """Per slide and each of our runs with Grad-CAM: whether it beat every peer that ran (and
    every peer in its default mode), on median wall time."""
    verdict = {}
    for slide, tools in summary.items():
        peers = {t: v["wall_s_median"] for t, v in tools.items() if not t.startswith("ours")}
        defaults = {t: w for t, w in peers.items() if not t.endswith("-speedup")}
        fastest = min(peers, key=peers.get) if peers else None
        verdict[slide] = {
            "fastest_peer": fastest,
            "fastest_peer_wall_s": peers.get(fastest),
        }
        for tool, row in tools.items():
            if not tool.startswith("ours") or "no-gradcam" in tool:
                continue
            ours = row["wall_s_median"]
            verdict[slide][tool] = {
                "wall_s": ours,
                "ahead_of_every_peer": bool(peers and ours < min(peers.values())),
                "ahead_of_every_peer_default": bool(defaults and ours < min(defaults.values())),
            }
    return verdict


def print_table(summary: dict, alone: dict) -> None:
    print(f"\n{'slide':<34}{'tool':<18}{'wall median (min-max) s':>26}{'patches':>10}{'cpu s':>8}")
    for slide, tools in summary.items():
        for tool, s in tools.items():
            wall = f"{s['wall_s_median']:.1f} ({s['wall_s_min']:.1f}-{s['wall_s_max']:.1f})"
            patches = "/".join(str(p) for p in s["patches"])
            print(f"{slide:<34}{tool:<18}{wall:>26}{patches:>10}{s['cpu_s_median']:>8.1f}")
    print("\nmodel alone, batch 64:", json.dumps(alone, indent=1))


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="create the peers' environments")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    ap.add_argument("--pip-args", default="", help="extra arguments for --setup's pip installs")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of tools")
    ap.add_argument("--slides", default="small,tiled", help="small, tiled or both")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    ap.add_argument("--alone-repeat", type=int, default=10, help="timed batches, model alone")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "peers.json")
    ap.add_argument(
        "--alone-only",
        action="store_true",
        help="measure only the models alone, into the model_alone of an existing --out",
    )
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        sys.exit(f"unknown tools {sorted(unknown)}; choose from {', '.join(TOOLS)}")
    if not CMU_SLIDE.is_file():
        sys.exit(f"skipped: no {CMU_SLIDE} (the shared real data is absent)")
    if args.setup:
        setup_peers(tools, args.pip_args.split())
    if args.alone_only:
        result = json.loads(args.out.read_text())
        models = {"ours": our_model(WORK / "models")}
        for family in sorted({t.split("-")[0] for t in tools}):
            if family == "wsinfer":
                models["wsinfer"] = wsinfer_model(WORK / "models")
            if family == "tiatoolbox":
                models["tiatoolbox"] = tiatoolbox_weights(WORK / "models")
            result["model_alone"][family] = {
                **model_alone(family, models, args.alone_repeat),
                "measured_by": "python benchmarks/bench_peers.py " + " ".join(sys.argv[1:]),
            }
        write_json_atomic(args.out, result)
        print(json.dumps(result["model_alone"], indent=1))
        return

    status = {t: peer_status(t) for t in tools}
    for tool, (ok, why) in status.items():
        if not ok:
            print(f"SKIPPED {tool}: {why}", flush=True)
    active = [t for t in tools if status[t][0]]
    start = machine_start()
    warn_if_contended_at_start(start)

    slides = []
    if "small" in args.slides:
        slides.append(CMU_SLIDE)
    if "tiled" in args.slides:
        t0 = time.perf_counter()
        slides.append(tiled_slide())
        print(f"tiled slide: {slides[-1]} ({time.perf_counter() - t0:.1f} s)", flush=True)
    models_dir = WORK / "models"
    models: dict = {"ours": our_model(models_dir)}
    if any(t.startswith("wsinfer") for t in active):
        models["wsinfer"] = wsinfer_model(models_dir)
    if "tiatoolbox" in active:
        models["tiatoolbox"] = tiatoolbox_weights(models_dir)

    families = sorted({t.split("-")[0] for t in active})
    versions = {t: peer_versions(t) for t in families}
    runs: list[dict] = []
    alone: dict = {}

    def save(done: bool) -> dict:
        """peers.json with every run so far (rewritten after each: a stopped run keeps them)."""
        summary = summarise(runs)
        result = {
            "command": "python benchmarks/bench_peers.py " + " ".join(sys.argv[1:]),
            "complete": done,
            "conditions": {
                "architecture": "ResNet50, random weights, each tool's own build",
                "patch": f"{PATCH} px at {PATCH_MPP} um/px, stride {PATCH}",
                "batch": BATCH,
                "rounds": args.rounds,
                "warmup_runs": not args.no_warmup,
                "timing": "process start to exit (subprocess wall clock)",
                "ours_python": str(ours_python()),
                "commands": {t: command(t, slides[0], Path("OUT"), models)[0] for t in active},
            },
            "skipped": {t: why for t, (ok, why) in status.items() if not ok},
            "slides": {s.name: {"path": str(s), "size_bytes": s.stat().st_size} for s in slides},
            "summary": summary,
            "ours_ahead": ahead(summary),
            "model_alone": alone,
            "runs": runs,
            "versions": versions,
            "machine": machine_end(start, {"peers": versions}),
        }
        write_json_atomic(args.out, result)
        return result

    if not args.no_warmup:
        for tool in active:  # first runs pay for cold file caches and compiler caches
            row = run_once(tool, slides[0], models)
            runs.append({**row, "warmup": True})
            print(f"warm-up {tool:<16} {row['wall_s']:>7.1f} s  rc {row['returncode']}", flush=True)
    for r in range(args.rounds):
        order = active[r % len(active) :] + active[: r % len(active)]
        for slide in slides:
            for tool in order:
                row = {**run_once(tool, slide, models), "round": r}
                runs.append(row)
                print(
                    f"round {r} {slide.name:<32} {tool:<20} {row['wall_s']:>7.1f} s "
                    f"{row.get('patches', '-')!s:>6} patches  load {row['load_1min_at_start']}"
                    + ("" if row["returncode"] == 0 else f"  FAILED rc {row['returncode']}"),
                    flush=True,
                )
                save(done=False)
    for family in families:
        alone[family] = model_alone(family, models, args.alone_repeat)
    result = save(done=True)
    summary = result["summary"]
    print_table(summary, alone)
    print("\nahead:", json.dumps(result["ours_ahead"], indent=1))
    warn_if_contended_at_end(result["machine"])
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
