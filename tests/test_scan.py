"""`wsi-saliency scan`: pipeline, outputs, cohort behaviour and bad input, on small synthetic
slides written by the package's generator and a tiny untrained model."""

import csv
import json
import math

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from wsi_saliency.backend import backend_name
from wsi_saliency.cli import app
from wsi_saliency.evaluation import dihedral
from wsi_saliency.scan.cohort import SLIDE_FILES
from wsi_saliency.scan.pipeline import undo_dihedral

runner = CliRunner()
MPP = 0.486  # level-0 microns per pixel of the test slides: 2 level-0 px per model px


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from wsi_saliency.synthetic.slides import write_synthetic_slide
    from wsi_saliency.synthetic.tissue import random_blob_polygon

    folder = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(0)
    lesion = random_blob_polygon(rng, (900.0, 700.0), 250.0, irregularity=0.3, n_vertices=48)
    tissue = [np.array([[150, 150], [1900, 200], [1850, 1350], [200, 1300]], float)]
    info = write_synthetic_slide(
        folder / "small.tif",
        l0_size_xy=(2048, 1536),
        mpp=MPP,
        lesions=[lesion],
        seed=1,
        tile=256,
        levels=(1, 4),
        tissue=tissue,
        pen_mark=False,
        dark_area=False,
    )
    return info.path


def _scan(args, model, out, *extra):
    """``wsi-saliency scan ARGS --model MODEL --out OUT --quiet EXTRA...``."""
    argv = [*args, "--model", model, "--out", out, "--quiet", *extra]
    return runner.invoke(app, ["scan", *map(str, argv)])


def _scan_ok(slide, model, out, *extra) -> dict:
    """``_scan`` of the one test slide, which must succeed; its ``summary.json``."""
    result = _scan([slide], model, out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "small" / "summary.json").read_text())


def test_scan_writes_every_output_with_frames_and_provenance(slide, tiny_model, tmp_path):
    result = _scan([slide], tiny_model, tmp_path)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "small"
    for name in ("scan.h5", "heatmap.png", "gradcam.png", "tissue.png", "summary.json"):
        assert (folder / name).is_file(), name
    for name in ("heatmap.tiff", "gradcam.tiff", "regions.geojson", "regions.xml"):
        assert (folder / name).is_file(), name  # viewer files (tests/test_export.py)
    assert not list(tmp_path.glob(".*partial"))
    with h5py.File(folder / "scan.h5") as f:
        n = f["prob"].shape[0]
        assert n > 20 and f["coords"].shape == (n, 2) and f["tissue_fraction"].shape == (n,)
        assert f["gradcam"].shape == (n, 12, 12)  # tiny backbone: 12x12 map per patch
        a = dict(f.attrs)
        # A patch covers the same tissue as a PCam patch: 96 x 0.972 / 0.486 = 192 level-0 px.
        assert a["patch_size_l0"] == pytest.approx(192.0, rel=0.01)
        assert a["stride_l0"] == pytest.approx(192.0, rel=0.01)
        assert a["slide_mpp"] == pytest.approx(MPP) and a["target_mpp"] == pytest.approx(0.972)
        assert tuple(a["slide_dimensions"]) == (2048, 1536)
        hm = f["heatmap_prob"][()]
        assert hm.shape == (round(1536 / 192), round(2048 / 192) + 1) or hm.shape[0] * 192 >= 1536
        assert a["heatmap_prob_downsample"] == pytest.approx(192.0, rel=0.01)
        assert a["heatmap_gradcam_downsample"] == pytest.approx(16.0, rel=0.01)
        # Each scored patch's probability sits in the heatmap cell of its coordinates.
        coords, prob = f["coords"][()], f["prob"][()]
        cells = np.floor((coords + 1) / a["heatmap_prob_downsample"]).astype(int)
        np.testing.assert_allclose(hm[cells[:, 1], cells[:, 0]], prob, rtol=1e-6)
        assert np.isnan(hm).any()  # glass is not scored
        card = json.loads(a["model_card"])
        assert card["patch_mpp"] == 0.972 and "versions" in a and "config" in a
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["patches_scored"] == n and summary["read_level"] == 0
    assert 0 <= summary["score_max"] <= 1 and summary["area_above_threshold_mm2"] >= 0
    assert summary["patches_per_s"] > 0 and summary["timings_s"]["total_s"] > 0
    # the slide's seconds (scan and outputs) hold its scan, layout made ahead included
    assert summary["seconds"] >= summary["timings_s"]["total_s"]
    assert summary["reader"] == "threads"  # auto on a CPU
    # auto: compiled on JAX; on TensorFlow only with a GPU (XLA was the slower on a CPU)
    assert summary["gradcam_compiled"] is (backend_name() == "jax")
    for stage in ("open_s", "thumbnail_s", "tissue_s", "tiling_s", "inference_s"):
        assert summary["timings_s"][stage] >= 0, stage
    # every file but summary.json itself, each timed
    assert set(summary["output_seconds"]) == set(SLIDE_FILES) - {"summary.json"}
    import keras

    assert summary["versions"]["keras_backend"] == keras.backend.backend()
    rows = list(csv.DictReader((tmp_path / "cohort.csv").open()))
    assert rows[0]["status"] == "done" and float(rows[0]["score_max"]) == pytest.approx(
        summary["score_max"], abs=1e-5
    )


def test_rerun_skips_complete_slides_and_redoes_interrupted_ones(slide, tiny_model, tmp_path):
    assert _scan([slide], tiny_model, tmp_path).exit_code == 0
    again = _scan([slide], tiny_model, tmp_path)
    assert again.exit_code == 0 and "1 skipped" in again.output
    (tmp_path / "small" / "summary.json").unlink()  # as if interrupted before the last file
    redo = _scan([slide], tiny_model, tmp_path)
    assert "1 scanned" in redo.output and (tmp_path / "small" / "summary.json").is_file()
    forced = _scan([slide], tiny_model, tmp_path, "--overwrite")
    assert "1 scanned" in forced.output


def test_a_bad_slide_is_reported_and_the_rest_go_on(slide, tiny_model, tmp_path):
    bad = tmp_path / "in" / "broken.svs"
    bad.parent.mkdir()
    bad.write_text("this is not a slide")
    result = _scan([bad, slide], tiny_model, tmp_path / "out")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    rows = {
        r["slide"].split("/")[-1]: r
        for r in csv.DictReader((tmp_path / "out" / "cohort.csv").open())
    }
    assert rows["broken.svs"]["status"] == "failed" and "broken.svs" in rows["broken.svs"]["error"]
    assert rows["small.tif"]["status"] == "done"
    assert not (tmp_path / "out" / "broken").exists()


def _plain_tiff(path, image, *, resolution=None):
    kw = {"resolution": resolution, "resolutionunit": "CENTIMETER"} if resolution else {}
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="jpeg", **kw)


def test_slide_without_resolution_needs_slide_mpp(tiny_model, tmp_path):
    image = np.full((1024, 1024, 3), 235, np.uint8)
    image[200:800, 200:800] = (200, 120, 170)
    path = tmp_path / "nompp.tif"
    _plain_tiff(path, image)
    result = _scan([path], tiny_model, tmp_path / "out")
    assert result.exit_code == 1 and "--slide-mpp" in result.output
    ok = _scan([path], tiny_model, tmp_path / "out2", "--slide-mpp", "0.5")
    assert ok.exit_code == 0, ok.output


def test_blank_slide_gives_empty_heatmaps_score_zero_and_a_warning(tiny_model, tmp_path):
    path = tmp_path / "blank.tif"
    _plain_tiff(path, np.full((1024, 1024, 3), 242, np.uint8), resolution=(1e4 / 0.5, 1e4 / 0.5))
    result = _scan([path], tiny_model, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "no tissue" in result.output
    summary = json.loads((tmp_path / "out" / "blank" / "summary.json").read_text())
    assert summary["score_max"] == 0 and summary["patches_scored"] == 0
    with h5py.File(tmp_path / "out" / "blank" / "scan.h5") as f:
        assert np.isnan(f["heatmap_prob"][()]).all()


@pytest.mark.parametrize(
    "case", ["model_without_card", "out_is_a_file", "missing_slide", "bad_stride_cells"]
)
def test_usage_errors_stop_before_any_work(case, slide, tiny_model, tmp_path):
    model, out, slides, extra = tiny_model, tmp_path / "out", [slide], []
    if case == "model_without_card":
        import keras

        model = tmp_path / "plain.keras"
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).save(model)
    elif case == "out_is_a_file":
        out.write_text("")
    elif case == "missing_slide":
        slides = [tmp_path / "nope.svs"]
    else:
        extra = ["--stride", "50"]  # 50 * 12 / 96 is not a whole number of cells
    result = _scan(slides, model, out, *extra)
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not (out.is_dir() and any(out.iterdir()))


def test_stride_32_puts_predictions_on_pcam_centres(slide, tiny_model, tmp_path):
    result = _scan([slide], tiny_model, tmp_path, "--stride", "32", "--no-gradcam")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "small" / "scan.h5") as f:
        assert f.attrs["stride_l0"] == pytest.approx(64.0, rel=0.01)
        assert f.attrs["heatmap_prob_downsample"] == pytest.approx(64.0, rel=0.01)
        assert f["gradcam"].shape[1:] == (0, 0)


def test_undo_dihedral_inverts_every_view():
    maps = np.random.default_rng(0).random((2, 5, 5)).astype(np.float32)
    for k in range(8):
        view = dihedral(maps[..., None], k)[..., 0]
        np.testing.assert_array_equal(undo_dihedral(view, k), maps)


def test_tta_scan_runs_and_is_recorded(slide, tiny_model, tmp_path):
    summary = _scan_ok(slide, tiny_model, tmp_path, "--tta")
    assert summary["config"]["tta"] is True


@pytest.mark.realdata
def test_real_aperio_slide_is_resampled_to_the_model_resolution(cmu_slide, tiny_model, tmp_path):
    result = _scan([cmu_slide], tiny_model, tmp_path)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "CMU-1-Small-Region" / "scan.h5") as f:
        # 96 x 0.972 / 0.499 = 187 level-0 px per patch (within 1 %).
        assert f.attrs["patch_size_l0"] == pytest.approx(96 * 0.972 / 0.499, rel=0.01)
        assert f.attrs["slide_mpp"] == pytest.approx(0.499, abs=1e-3)
        mask = f["tissue_mask"][()].astype(bool)
        assert 0.25 < mask.mean() < 0.5  # the section, not the glass
        assert f["prob"].shape[0] > 50


def test_user_tissue_mask_and_roi_replace_the_automatic_mask(slide, tiny_model, tmp_path):
    from PIL import Image

    from wsi_saliency.data.annotations import Annotation, write_asap_xml

    masks, rois = tmp_path / "masks", tmp_path / "rois"
    masks.mkdir()
    rois.mkdir()
    left = np.zeros((150, 200), np.uint8)
    left[:, :100] = 255  # the left half of the slide is "tissue"
    Image.fromarray(left).save(masks / "small.png")
    box = np.array([[0, 0], [1024, 0], [1024, 768], [0, 768]], float)  # top-left quarter
    write_asap_xml(rois / "small.xml", [Annotation("roi", "_0", box)])
    user = ("--tissue-masks", masks, "--roi", rois, "--no-gradcam")
    result = _scan([slide], tiny_model, tmp_path / "out", *user)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "out" / "small" / "scan.h5") as f:
        coords = f["coords"][()]
        assert len(coords) > 0
        assert (coords[:, 0] + 96 <= 1024).all() and (coords[:, 1] + 96 <= 768).all()
        assert f["tissue_mask"][()][:, :5].all()  # the user's mask, not the automatic one
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = _scan([slide], tiny_model, tmp_path / "out2", "--roi", empty)
    assert missing.exit_code == 1 and "no region of interest for small.tif" in missing.output


def test_overview_takes_a_level_slightly_coarser_than_asked_as_it_is():
    from wsi_saliency.scan.pipeline import overview_downsample

    # 6000 px wide, 1536 asked: ds 3.9; the x4 level is 2.4 % coarser, so it is taken whole
    # (OpenSlide would otherwise decode level 0 whole for the thumbnail).
    assert overview_downsample((6000, 4800), (1.0, 4.0, 16.0)) == 4.0
    # No level within 25 %: the overview fits 1536 px.
    assert overview_downsample((16000, 12000), (1.0, 4.0, 16.0)) == pytest.approx(16000 / 1536)
    assert overview_downsample((1000, 800), (1.0,)) == 1.0


def test_reading_in_processes_gives_the_same_scan(slide, tiny_model, tmp_path):
    """--set scan.reader=processes: the same probabilities and maps as reading in threads.
    ``gradcam_dense_min=0`` computes every patch's map densely, so the dense pass reads tiles
    in both runs whatever the untrained model's maps are."""
    got = {}
    for reader in ("threads", "processes"):
        out = tmp_path / reader
        sets = ("--set", f"scan.reader={reader}", "--set", "scan.gradcam_dense_min=0")
        summary = _scan_ok(slide, tiny_model, out, "--workers", "2", *sets)
        with h5py.File(out / "small" / "scan.h5") as f:
            got[reader] = {k: f[k][()] for k in ("coords", "prob", "gradcam", "heatmap_gradcam")}
            assert f.attrs["gradcam_dense_patches"] == len(got[reader]["prob"])
            assert json.loads(f.attrs["config"])["reader"] == reader
        assert summary["reader"] == reader
    for key, value in got["threads"].items():
        np.testing.assert_array_equal(got["processes"][key], value, err_msg=key)


def test_mixed_precision_on_a_bfloat16_cpu_scans_in_bfloat16(slide, tiny_model, tmp_path):
    """--set scan.mixed_precision=on without a GPU: bfloat16 where the CPU has it, recorded in
    the outputs, probabilities near the float32 scan's."""
    from wsi_saliency.backend import cpu_has_bfloat16, device_info

    if device_info().has_gpu or not cpu_has_bfloat16():
        pytest.skip("needs a CPU with bfloat16 instructions and no GPU")
    got = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        summary = _scan_ok(slide, tiny_model, out, "--set", f"scan.mixed_precision={mode}")
        assert summary["dtype_policy"] == ("mixed_bfloat16" if mode == "on" else "float32")
        with h5py.File(out / "small" / "scan.h5") as f:
            assert f.attrs["dtype_policy"] == summary["dtype_policy"]
            got[mode] = f["prob"][()]
    np.testing.assert_allclose(got["on"], got["off"], atol=0.05)
    assert not np.array_equal(got["on"], got["off"])  # it did compute in bfloat16
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the process's policy is untouched


def test_batch_norm_folded_by_default_and_recorded(slide, tiny_model, tmp_path):
    """scan.fold_batch_norm (on by default): the scan's model has its BNs folded into the
    convolutions; the outputs say how many, and the figures match the unfolded model's
    (float32 rounding apart; tests/test_fold.py folds BNs with non-trivial statistics)."""
    from wsi_saliency.backend import gradcam_jit

    compiled = gradcam_jit("auto")
    got = {}
    for fold in ("true", "false"):
        out = tmp_path / fold
        summary = _scan_ok(slide, tiny_model, out, "--set", f"scan.fold_batch_norm={fold}")
        with h5py.File(out / "small" / "scan.h5") as f:
            assert f.attrs["batch_norm_folded"] == summary["batch_norm_folded"]
            assert f.attrs["batch_size"] == summary["batch_size"]
            n = len(f["prob"])  # equal batches of at most scan.batch_size (64); compiled: 64
            assert summary["batch_size"] == (64 if compiled else math.ceil(n / math.ceil(n / 64)))
            got[fold] = {k: f[k][()] for k in ("prob", "gradcam", "heatmap_gradcam")}
        # the tiny backbone: two Conv2D + BN pairs in each of its four stages
        assert summary["batch_norm_folded"] == (8 if fold == "true" else 0)
    for key, value in got["false"].items():
        scale = float(np.nanmax(np.abs(value))) or 1.0  # heatmaps are NaN off the tissue
        np.testing.assert_allclose(got["true"][key], value, atol=1e-5 * scale, err_msg=key)


def test_mixed_precision_on_a_cpu_without_bfloat16_is_one_line(
    slide, tiny_model, tmp_path, monkeypatch
):
    from wsi_saliency import backend

    if backend.device_info().has_gpu:
        pytest.skip("a GPU is visible: mixed precision is float16 there")
    monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: False)
    result = _scan([slide], tiny_model, tmp_path / "out", "--set", "scan.mixed_precision=on")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "AVX512_BF16 or AMX" in lines[0], result.output


def test_a_layout_made_ahead_gives_the_same_scan(slide, tiny_model, tmp_path):
    """Stage 1 without the model (as a cohort lays out the next slide while the model works):
    the scan that takes it is the scan that makes it, and counts its seconds."""
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.errors import InputError
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer, lay_out_slide, scan_slide

    model, card = load_model(tiny_model)
    cfg = ScanConfig(workers=1)
    scorer = PatchScorer.from_config(model, card, cfg)
    direct = scan_slide(slide, model, card, cfg, scorer=scorer)
    layout = lay_out_slide(slide, card, cfg)  # no scorer: no model needed
    ahead = scan_slide(slide, model, card, cfg, scorer=scorer, layout=layout)
    for key in ("coords", "prob", "gradcam", "heatmap_prob", "heatmap_gradcam", "tissue_mask"):
        np.testing.assert_array_equal(getattr(ahead, key), getattr(direct, key), err_msg=key)
    assert layout.seconds > 0 and ahead.timings["total_s"] > layout.seconds
    other = tmp_path / "other.tif"
    other.write_bytes(slide.read_bytes())
    with pytest.raises(InputError, match="layout given is of"):
        scan_slide(other, model, card, cfg, scorer=scorer, layout=layout)
