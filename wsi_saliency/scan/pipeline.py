"""Scan one slide: resolution plan -> tissue mask -> patch grid -> batched reads ->
model + Grad-CAM in one pass -> stitched heatmaps, returned as a ``SlideResult``.

Nothing here writes files (see ``wsi_saliency.outputs``); everything runs from a notebook:

    model, card = load_model("runs/sample/model.keras")
    result = scan_slide("slide.tif", model, card, ScanConfig())
    result.heatmap_prob  # float32 [rows, cols], NaN where not scored
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.config import ScanConfig, default_workers
from wsi_saliency.errors import InputError
from wsi_saliency.evaluation import dihedral

OVERVIEW_MAX_SIDE = 1536


@dataclass
class SlideResult:
    """Everything a scan computed for one slide.

    Frames: ``coords`` are level-0 (x, y) of each scored patch's top-left; heatmaps are
    [row, col] arrays whose cell (r, c) covers level-0 x in [c * d, (c + 1) * d) and y in
    [r * d, (r + 1) * d) with d = ``*_downsample`` (level-0 pixels per cell).
    """

    path: Path
    coords: np.ndarray  # int64 [N, 2] level-0 (x, y)
    grid_rc: np.ndarray  # int64 [N, 2] (row, col) in the stride grid
    prob: np.ndarray  # float32 [N]
    gradcam: np.ndarray  # float32 [N, h, w] (raw, not normalised per patch); [N, 0, 0] if off
    tissue_fraction: np.ndarray  # float32 [N]
    heatmap_prob: np.ndarray  # float32 [H, W], NaN where not scored
    heatmap_prob_downsample: float
    heatmap_gradcam: np.ndarray  # float32 [H', W'], NaN where not scored
    heatmap_gradcam_downsample: float
    tissue_mask: np.ndarray  # bool [h, w] on the thumbnail grid
    thumbnail: np.ndarray  # uint8 [h, w, 3]
    thumbnail_downsample: tuple[float, float]  # level-0 px per thumbnail px (x, y)
    overview: np.ndarray  # uint8 [h, w, 3]: a larger thumbnail for the overlays (max side 1536)
    overview_downsample: tuple[float, float]  # level-0 px per overview px (x, y)
    patch_size_l0: float
    stride_l0: float
    target_mpp: float
    slide_mpp: float
    slide_dimensions: tuple[int, int]  # level-0 (width, height)
    plan: Any  # wsi_saliency.slide.ResolutionPlan
    n_candidates: int
    n_skipped_tissue: int
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    config: ScanConfig = field(default_factory=ScanConfig)
    # how heatmap_gradcam was made: "dense" or "patches" (see GRADCAM_MAP_METHODS); "" if off
    gradcam_map: str = ""
    gradcam_dense_patches: int = -1  # patches whose map was computed densely (-1: not dense)
    # the Keras dtype policy the backbone computed under: float32, mixed_float16/_bfloat16
    dtype_policy: str = "float32"
    # BatchNormalization layers folded into their convolutions (model/fold.py)
    batch_norm_folded: int = 0
    batch_size: int = 0  # patches per model batch on this slide (at most scan.batch_size)

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def gradcam_map_method(self) -> str:
        """How ``heatmap_gradcam`` was made, in words ("" without Grad-CAM)."""
        return GRADCAM_MAP_METHODS.get(self.gradcam_map, "")

    @property
    def n_scored(self) -> int:
        return int(self.prob.shape[0])

    def score_max(self) -> float:
        return float(self.prob.max()) if self.n_scored else 0.0

    def score_topk(self, k: int | None = None) -> float:
        k = k or self.config.top_k
        if not self.n_scored:
            return 0.0
        return float(np.sort(self.prob)[-k:].mean())

    def area_above_mm2(self, threshold: float | None = None) -> float:
        """Tissue area (mm^2) of probability-heatmap cells at or above ``threshold``."""
        t = self.config.threshold if threshold is None else threshold
        cells = int(np.count_nonzero(np.nan_to_num(self.heatmap_prob, nan=-1.0) >= t))
        cell_um = self.heatmap_prob_downsample * self.slide_mpp
        return cells * (cell_um / 1000.0) ** 2

    def summary(self) -> dict[str, Any]:
        total = self.timings.get("total_s", 0.0)
        return {
            "slide": str(self.path),
            "score_max": round(self.score_max(), 6),
            f"score_top{self.config.top_k}_mean": round(self.score_topk(), 6),
            "threshold": self.config.threshold,
            "area_above_threshold_mm2": round(self.area_above_mm2(), 4),
            "patches_scored": self.n_scored,
            "patches_skipped_tissue": self.n_skipped_tissue,
            "patches_candidates": self.n_candidates,
            "patch_size_l0": round(self.patch_size_l0, 4),
            "stride_l0": round(self.stride_l0, 4),
            "slide_mpp": self.slide_mpp,
            "target_mpp": self.target_mpp,
            "read_level": int(self.plan.level),
            "resolution": self.plan.describe(),
            "reading_workers": self.config.workers,
            "reader": self.config.reader,
            "gradcam_compiled": self.config.jit_compile == "on",
            "dtype_policy": self.dtype_policy,
            "batch_norm_folded": self.batch_norm_folded,
            "batch_size": self.batch_size,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "patches_per_s": round(self.n_scored / total, 1) if total else None,
            "model_patches_per_s": (
                round(self.n_scored / self.timings["model_s"], 1)
                if self.timings.get("model_s")
                else None
            ),
            "gradcam_map": self.gradcam_map,
            "gradcam_dense_patches": self.gradcam_dense_patches,
            "warnings": list(self.warnings),
        }


def undo_dihedral(maps: np.ndarray, k: int) -> np.ndarray:
    """Map [B, h, w] computed on ``dihedral(x, k)`` back to the frame of ``x``."""
    if k >= 4:
        maps = maps[:, :, ::-1]
    return np.rot90(maps, -(k % 4), axes=(1, 2))


GRADCAM_MAP_METHODS = {
    "dense": (
        "dense Grad-CAM: the layers up to the Grad-CAM layer run over whole tiles of the slide "
        "(read with a margin of context); each patch's map is Grad-CAM of the head on its "
        "footprint of those features (GAP + Dense head: exactly ReLU(sum_k w_k A_k) / (h w), the "
        "per-patch formula and scale), stitched on the feature lattice and resampled "
        "bilinearly; patches whose own map stays below scan.gradcam_dense_min of the slide's "
        "scale (99.5th percentile), and not next to one that does, keep their per-patch maps"
    ),
    "patches": (
        "per-patch Grad-CAM maps (the dataset 'gradcam') upsampled bilinearly to the cells of "
        "each patch and averaged where patches overlap"
    ),
}
"""What ``SlideResult.gradcam_map`` means (recorded in ``scan.h5``)."""


class PatchScorer:
    """Probabilities (and Grad-CAM maps) for batches of patches, in one model pass.

    ``__call__(patches uint8 [B, P, P, 3]) -> (prob float32 [B], cam float32 [B, h, w] or None)``.
    With ``tta`` each patch is scored in its 8 dihedral views (one batch of 8B) and the
    probabilities and (re-aligned) maps are averaged. ``dense()``: the
    :class:`~wsi_saliency.model.gradcam.DenseGradCam` for the slide map (built on first use).
    """

    def __init__(
        self,
        model,
        card,
        *,
        gradcam: bool = True,
        layer: str | None = None,
        tta: bool = False,
        batch_size: int | None = None,
        jit: bool = True,
    ):
        from wsi_saliency.model.gradcam import GradCam, forward_fn

        self.model = model
        self.tta = tta
        # A slide's batches are padded to one size (batch_for): a patch's numbers then do not
        # depend on which batch it lands in (kernels differ by batch size; threads deliver
        # regions in any order), and a compiled step (XLA, jax.jit) compiles one shape.
        self.batch_size = batch_size
        self.layer = layer or card.gradcam_layer
        self.logit_layer = card.logit_layer
        self.jit = jit
        self.gradcam = GradCam(model, self.layer, card.logit_layer, jit=jit) if gradcam else None
        self.map_shape = self.gradcam.map_shape if self.gradcam else (0, 0)
        # Without Grad-CAM, the probability alone: the same uncompiled graph on TensorFlow
        # (Keras' predict_on_batch compiles it with XLA: slower on a CPU, and once per shape)
        self._forward = None if gradcam else forward_fn(model, jit=jit)
        self._dense = None

    def dense(self):
        """The dense Grad-CAM of this scorer's model and layer (ModelError if it cannot be)."""
        from wsi_saliency.model.gradcam import DenseGradCam

        if self._dense is None:
            self._dense = DenseGradCam(self.model, self.layer, self.logit_layer, jit=self.jit)
        return self._dense

    @classmethod
    def from_config(cls, model, card, cfg: ScanConfig) -> PatchScorer:
        """The scorer ``scan_slide`` uses for ``cfg`` (TTA runs batches of 8 x batch_size / 8)."""
        from wsi_saliency.backend import gradcam_jit

        return cls(
            model,
            card,
            gradcam=cfg.gradcam,
            layer=cfg.gradcam_layer,
            tta=cfg.tta,
            batch_size=max(1, cfg.batch_size // 8) if cfg.tta else cfg.batch_size,
            jit=gradcam_jit(cfg.jit_compile),
        )

    def batch_for(self, n_patches: int) -> int | None:
        """The batch size a slide of ``n_patches`` is cut into and padded to.

        An uncompiled pass (TensorFlow's graph on a CPU, PyTorch) takes any batch size without a
        retrace, so the patches are cut into equal batches of at most ``batch_size``: a slide
        of 81 patches runs as 2 x 41, not 64 + 17 padded to 64 (47 patches of wasted work).
        Each slide's batches are all one size, so a patch's numbers still do not depend on
        which batch it lands in. A compiled step (XLA, jax.jit) compiles each shape: it keeps
        ``batch_size``.
        """
        b = self.batch_size
        if not b or self.jit or n_patches <= 0:
            return b
        return math.ceil(n_patches / math.ceil(n_patches / b))

    def _once(
        self, x: np.ndarray, pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(x)
        size = (8 if self.tta else 1) * (pad_to or self.batch_size or 0)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        if self.gradcam is not None:
            prob, cam = self.gradcam(x)
            return prob[:n], cam[:n]
        prob = np.asarray(self._forward(x.astype(np.float32)), np.float32)
        return prob.reshape(-1)[:n], None

    def __call__(
        self, patches: np.ndarray, pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``pad_to``: the batch size to pad a short batch to (``batch_for``), default
        ``batch_size``."""
        if not self.tta:
            return self._once(patches, pad_to)
        b = len(patches)
        views = np.concatenate([dihedral(patches, k) for k in range(8)])
        prob, cam = self._once(views, pad_to)
        prob = prob.reshape(8, b).mean(axis=0)
        if cam is not None:
            cam = np.mean([undo_dihedral(cam[k * b : (k + 1) * b], k) for k in range(8)], axis=0)
        return prob, cam


@dataclass
class SlideLayout:
    """Stage 1 of a scan: what the slide is and where its patches are, before any model work.

    ``plan``: the resolution plan; ``grid``: the patch grid (level-0 (x, y) of every patch
    kept); ``mask``: the tissue mask, [row, col] on ``thumbnail``, ``thumb_l0_per_px`` level-0
    px per thumbnail px (x, y); ``overview`` RGB with ``overview_downsample`` (level-0 px per
    overview px, (x, y))."""

    path: Path
    l0_size: tuple[int, int]
    plan: Any
    grid: Any
    mask: np.ndarray
    thumbnail: np.ndarray
    thumb_l0_per_px: tuple[float, float]
    overview: np.ndarray
    overview_downsample: tuple[float, float]
    timings: dict[str, float]
    notes: list[str]
    seconds: float = 0.0  # the layout's own wall time


def lay_out_slide(
    path: Path,
    card,
    cfg: ScanConfig,
    scorer: PatchScorer | None = None,
    *,
    tissue: np.ndarray | str | Path | None = None,
    roi: np.ndarray | str | Path | None = None,
) -> SlideLayout:
    """Stage 1: open the slide, plan the resolution, check what it will allocate, build the
    overview and the tissue mask (or take the user's), and tile the tissue.

    Needs no model: without a ``scorer`` the per-patch Grad-CAM arrays are left out of the
    memory check (``scan_slide`` checks them when it takes the layout). A cohort lays out
    the next slide this way while the model works on the current one."""
    from wsi_saliency.slide import open_slide, plan_resolution, tile_grid
    from wsi_saliency.slide.tissue import tissue_mask

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    patch = int(card.patch_size)
    with open_slide(path) as reader:
        plan = plan_resolution(
            reader, card.patch_mpp, slide_mpp=cfg.slide_mpp, tolerance=cfg.mpp_tolerance
        )
        if plan.warning:
            notes.append(plan.warning)
        # arrays sized by what the file and the options declare: checked before any is made
        _check_memory(reader.dimensions, plan, card, cfg, path.name, scorer)
        timings["open_s"] = time.perf_counter() - t_start

        t = time.perf_counter()
        l0_size = tuple(int(v) for v in reader.dimensions)
        overview, thumb = _overview_and_thumbnail(reader, plan.l0_mpp, cfg.thumb_mpp)
        overview_ds = (l0_size[0] / overview.shape[1], l0_size[1] / overview.shape[0])
        thumb_shape = thumb.image.shape[:2]
        timings["thumbnail_s"] = time.perf_counter() - t  # overview and thumbnail
        t = time.perf_counter()
        if tissue is None:
            mask = tissue_mask(thumb.image, thumb_mpp=thumb.mpp)
        else:
            mask = _user_mask(tissue, thumb_shape, thumb.l0_per_px)
        roi_mask = None if roi is None else _user_mask(roi, thumb_shape, thumb.l0_per_px)
        timings["tissue_s"] = time.perf_counter() - t  # the mask, from the thumbnail

    t = time.perf_counter()
    grid = tile_grid(
        l0_size,
        plan,
        patch_t=patch,
        stride_t=int(cfg.stride or patch),
        mask=mask,
        mask_l0_per_px=thumb.l0_per_px,
        min_tissue_fraction=cfg.min_tissue_fraction,
        roi=roi_mask,
        roi_l0_per_px=None if roi is None else thumb.l0_per_px,
        cover_edges=True,
    )  # edge patches read white beyond the slide
    timings["tiling_s"] = time.perf_counter() - t
    if len(grid) == 0:
        notes.append(
            f"{path.name}: no tissue found (0 of {grid.n_candidates} patches reach "
            f"{cfg.min_tissue_fraction:.0%} tissue); heatmaps are empty and the score is 0"
        )
    return SlideLayout(
        path,
        l0_size,
        plan,
        grid,
        mask,
        thumb.image,
        thumb.l0_per_px,
        overview,
        overview_ds,
        timings,
        notes,
        time.perf_counter() - t_start,
    )


@dataclass
class PatchScores:
    """Stage 2 of a scan: every grid patch's probability and per-patch Grad-CAM map (rows in
    grid order), the stitched probability heatmap, and the stitched per-patch Grad-CAM map when
    the slide map is made from them (``heatmap_gradcam`` None otherwise)."""

    prob: np.ndarray
    gradcam: np.ndarray
    heatmap_prob: np.ndarray
    heatmap_prob_downsample: float
    heatmap_gradcam: np.ndarray | None
    heatmap_gradcam_downsample: float | None
    batch_size: int = 0  # patches per model batch on this slide (PatchScorer.batch_for)


def read_in_processes(cfg: ScanConfig) -> bool:
    """Whether a scan reads in processes: ``scan.reader``, where ``auto`` is processes when the
    model runs on a GPU (reading must keep up with it; ``benchmarks/bench_reading.py`` projects
    16 processes past 16 threads) and threads on a CPU (the model is the limit there, and
    ``benchmarks/bench_throughput.py`` measured no consistent difference). Threads wherever
    processes cannot be spawned (``wsi_saliency.slide.loader.can_spawn``)."""
    from wsi_saliency.slide.loader import can_spawn

    if cfg.reader != "auto":
        return cfg.reader == "processes" and can_spawn()
    from wsi_saliency.backend import device_info

    return device_info().has_gpu and can_spawn()


def score_patches(
    layout: SlideLayout,
    scorer: PatchScorer,
    cfg: ScanConfig,
    *,
    stitch_gradcam: bool,
    progress: bool = False,
) -> PatchScores:
    """Stage 2: read every patch of the grid (threads), run the model (+ Grad-CAM) in batches,
    stitch the probabilities, and the per-patch Grad-CAM maps when ``stitch_gradcam``."""
    from tqdm import tqdm

    from wsi_saliency.scan.stitch import HeatmapStitcher, MapStitcher
    from wsi_saliency.slide import iter_patch_batches, open_slide

    grid, path, timings = layout.grid, layout.path, layout.timings
    processes = read_in_processes(cfg)
    cells = cfg.gradcam_cells
    prob_stitch = HeatmapStitcher.from_grid(grid)
    cam_stitch = None
    if stitch_gradcam:
        cam_stitch = MapStitcher.from_grid(
            grid, cells, sigma_scale=0.125 if cfg.gradcam_centre_weighted else None
        )
    n = len(grid)
    probs = np.full(n, np.nan, np.float32)
    cams = np.zeros((n, *scorer.map_shape), np.float32)
    model_s = 0.0
    pad = scorer.batch_for(n)  # every batch of the slide is this size (None: not padded)
    size = pad or cfg.batch_size
    t = time.perf_counter()
    bar = tqdm(total=n, desc=path.name, unit="patch", disable=not progress, leave=False)
    try:
        for batch in iter_patch_batches(
            path if processes else lambda: open_slide(path),
            layout.plan,
            grid,
            batch_size=size,
            region_t=cfg.region,
            workers=default_workers() if cfg.workers is None else cfg.workers,
            processes=processes,
        ):
            tm = time.perf_counter()
            p, cam = scorer(batch.patches, pad_to=pad)
            model_s += time.perf_counter() - tm
            probs[batch.index] = p
            rc = grid.grid_rc[batch.index]
            prob_stitch.aggregate(p, rc)
            if cam is not None:
                cams[batch.index] = cam
                if cam_stitch is not None:
                    cam_stitch.aggregate(cam, rc)
            bar.update(len(batch))
    finally:
        bar.close()
    timings["inference_s"] = time.perf_counter() - t
    timings["model_s"] = model_s
    if n and np.isnan(probs).any():  # every grid patch must have come back exactly once
        raise RuntimeError(f"{path}: {int(np.isnan(probs).sum())} patches were not scored")
    t = time.perf_counter()
    heat_prob = prob_stitch.finalize()
    heat_cam = cam_ds = None
    if cam_stitch is not None:
        heat_cam = cam_stitch.finalize()
        cam_ds = float(cam_stitch.l0_per_cell or grid.patch_l0 / cells)
    timings["stitch_s"] = time.perf_counter() - t
    return PatchScores(
        probs,
        cams,
        heat_prob,
        float(prob_stitch.l0_per_cell or grid.stride_l0),
        heat_cam,
        cam_ds,
        batch_size=size,
    )


def scan_slide(
    path: str | Path,
    model,
    card,
    cfg: ScanConfig = ScanConfig(),  # noqa: B008 - frozen dataclass
    *,
    scorer: PatchScorer | None = None,
    tissue: np.ndarray | str | Path | None = None,
    roi: np.ndarray | str | Path | None = None,
    progress: bool = False,
    layout: SlideLayout | None = None,
) -> SlideResult:
    """Scan the slide at ``path`` with ``model`` (whose ``card`` gives patch size and mpp).

    ``tissue``: a user tissue mask used instead of the automatic one: bool [h, w] of any size
    covering the whole slide, or an image file (PNG/TIFF, non-zero = tissue). ``roi``: a region
    of interest patches must lie in (at least half inside): an array or image file as above,
    or ASAP/Camelyon16 XML outlines. ``scorer``: reuse one ``PatchScorer`` across slides.

    Probabilities come from the per-patch pass; the slide's Grad-CAM map from
    ``cfg.gradcam_map`` (``GRADCAM_MAP_METHODS``): "dense" reads the scored tissue a second
    time and runs the backbone over whole tiles (``wsi_saliency.scan.dense``), "patches"
    stitches the per-patch maps (the grid shows). Dense falls back to "patches", with a
    warning, when the model or the stride does not allow it.

    Stages: ``lay_out_slide`` (open, tissue, grid), ``score_patches`` (read + model), then the
    dense Grad-CAM map (``dense_slide_map``) when it is made. ``layout``: stage 1 done
    already (``lay_out_slide`` of this ``path``, with its ``tissue`` and ``roi``; those
    arguments are then unused); ``timings_s.total_s`` counts its own seconds.
    """
    from wsi_saliency.model.fold import folded_count
    from wsi_saliency.slide import open_slide

    path = Path(path)
    t_start = time.perf_counter()
    if cfg.workers is None:
        cfg = replace(cfg, workers=default_workers())
    # the result records the reader used (auto resolved)
    cfg = replace(cfg, reader="processes" if read_in_processes(cfg) else "threads")
    scorer = scorer or PatchScorer.from_config(model, card, cfg)
    # ... and whether its Grad-CAM pass was compiled (auto resolved: see gradcam_jit)
    cfg = replace(cfg, jit_compile="on" if scorer.jit else "off")
    ahead_s = 0.0  # seconds of a layout made before this call
    if layout is None:
        layout = lay_out_slide(path, card, cfg, scorer, tissue=tissue, roi=roi)
    else:
        if Path(layout.path) != path:
            raise InputError(f"the layout given is of {layout.path}, not of {path}")
        # the Grad-CAM arrays, now that the model says their size
        _check_memory(layout.l0_size, layout.plan, card, cfg, path.name, scorer)
        ahead_s = layout.seconds
    grid, timings, notes = layout.grid, layout.timings, layout.notes

    dense = _dense_for(scorer, grid, cfg, notes) if scorer.gradcam is not None else None
    scores = score_patches(layout, scorer, cfg, stitch_gradcam=dense is None, progress=progress)
    heat_cam, cam_ds = scores.heatmap_gradcam, scores.heatmap_gradcam_downsample
    cam_method = "patches" if scorer.gradcam is not None else ""
    n_dense = -1
    if dense is not None:
        from wsi_saliency.scan.dense import dense_slide_map

        dense_map = dense_slide_map(
            lambda: open_slide(path),
            layout.plan,
            grid,
            dense,
            cfg.gradcam_cells,
            region_t=cfg.region,
            workers=cfg.workers,
            tta=cfg.tta,
            sigma_scale=0.125 if cfg.gradcam_centre_weighted else None,
            progress=f"{path.name} Grad-CAM" if progress else None,
            patch_cams=scores.gradcam,
            dense_min=cfg.gradcam_dense_min,
            slide_path=path if cfg.reader == "processes" else None,  # resolved above
        )
        heat_cam, cam_ds = dense_map.heatmap, dense_map.l0_per_cell
        timings.update(dense_map.timings)
        n_dense = dense_map.n_dense
        cam_method = "dense"
    timings["total_s"] = time.perf_counter() - t_start + ahead_s
    return SlideResult(
        path=path,
        coords=grid.l0_xy,
        grid_rc=grid.grid_rc,
        prob=scores.prob,
        gradcam=scores.gradcam,
        tissue_fraction=grid.tissue_fraction,
        heatmap_prob=scores.heatmap_prob,
        heatmap_prob_downsample=scores.heatmap_prob_downsample,
        heatmap_gradcam=heat_cam,
        heatmap_gradcam_downsample=cam_ds,
        tissue_mask=layout.mask,
        thumbnail=layout.thumbnail,
        thumbnail_downsample=layout.thumb_l0_per_px,
        overview=layout.overview,
        overview_downsample=layout.overview_downsample,
        patch_size_l0=grid.patch_l0,
        stride_l0=grid.stride_l0,
        target_mpp=layout.plan.t_mpp,
        slide_mpp=layout.plan.l0_mpp,
        slide_dimensions=layout.l0_size,
        plan=layout.plan,
        n_candidates=grid.n_candidates,
        n_skipped_tissue=grid.n_skipped_tissue,
        timings=timings,
        warnings=notes,
        config=cfg,
        gradcam_map=cam_method,
        gradcam_dense_patches=n_dense,
        dtype_policy=scorer.model.get_layer(scorer.layer).dtype_policy.name,
        batch_norm_folded=folded_count(scorer.model),
        batch_size=scores.batch_size,
    )


def _check_memory(l0_size, plan, card, cfg: ScanConfig, name: str, scorer) -> None:
    """``check_scan_memory`` for a scan of ``card``'s patches; the per-patch Grad-CAM arrays
    are counted where the ``scorer`` is known (None: a layout made without the model)."""
    from wsi_saliency.scan.budget import check_scan_memory

    map_cells = None if scorer is None else math.prod(scorer.map_shape)
    check_scan_memory(
        l0_size, plan, patch_t=int(card.patch_size), cfg=cfg, name=name, map_cells=map_cells
    )


def _dense_for(scorer: PatchScorer, grid, cfg: ScanConfig, notes: list[str]):
    """The scorer's ``DenseGradCam`` when ``cfg`` asks for the dense map and it can be made for
    this grid; None (with a note saying why) to stitch the per-patch maps instead."""
    from wsi_saliency.errors import ModelError

    if cfg.gradcam_map != "dense":
        return None
    try:
        dense = scorer.dense()
    except ModelError as exc:
        notes.append(f"Grad-CAM map stitched from per-patch maps (the grid shows): {exc}")
        return None
    if grid.stride_t % dense.stride or grid.patch_t % dense.stride:
        notes.append(
            f"Grad-CAM map stitched from per-patch maps (the grid shows): the stride "
            f"{grid.stride_t} is not a multiple of the Grad-CAM layer's {dense.stride} px cells"
        )
        return None
    return dense


def overview_downsample(
    l0_size: tuple[int, int],
    level_downsamples: tuple[float, ...],
    max_side: int = OVERVIEW_MAX_SIDE,
) -> float:
    """Level-0 px per overview px: fit ``max_side``, or take a pyramid level that is at most
    25 % coarser than that as it is. OpenSlide builds a thumbnail from the finest level at
    or below the asked downsample, so asking for slightly more pixels than a level holds
    decodes the next finer level whole (a 6000 x 4800 slide with a x4 level: 1.2 s instead of
    0.05 s)."""
    ds = max(max(l0_size) / max_side, 1.0)
    for level_ds in sorted(level_downsamples):
        if ds < level_ds <= 1.25 * ds:
            return level_ds
    return ds


def _overview_and_thumbnail(reader, l0_mpp: float, thumb_mpp: float):
    """The overview (``uint8 [h, w, 3]``, max side ``OVERVIEW_MAX_SIDE``) and the tissue
    ``Thumbnail`` (about ``thumb_mpp``), with one pass over the slide where a second would cost
    more: the finer of the two is read and the coarser made from it, unless a pyramid level
    near the coarser one's resolution makes reading it directly cheap. (A single-level slide
    is otherwise read whole twice; each read is bounded in memory, see ``get_thumbnail``.)"""
    from PIL import Image

    from wsi_saliency.slide.reader import thumbnail_geometry
    from wsi_saliency.slide.tissue import slide_thumbnail, thumbnail_downsample

    l0_size = tuple(int(v) for v in reader.dimensions)
    ds = overview_downsample(l0_size, reader.level_downsamples)
    overview_wh = (max(1, math.floor(l0_size[0] / ds)), max(1, math.floor(l0_size[1] / ds)))
    t_ds = thumbnail_downsample(l0_size, l0_mpp, thumb_mpp)
    if t_ds < ds:  # the thumbnail is the finer: read the overview only if a level is near it
        level = thumbnail_geometry(reader.level_dimensions, reader.level_downsamples, overview_wh)
        if reader.level_downsamples[level.level] <= t_ds * 1.25:
            thumb = slide_thumbnail(reader, l0_mpp=l0_mpp, thumb_mpp=thumb_mpp)
            img = Image.fromarray(thumb.image)
            img.thumbnail(overview_wh, Image.Resampling.LANCZOS)
            return np.asarray(img), thumb
    overview = reader.get_thumbnail(overview_wh)
    # The tissue thumbnail comes from the overview when that is fine enough: a slide
    # without a coarse level would otherwise be decoded whole a second time.
    thumb = _thumbnail_from_overview(overview, l0_size, l0_mpp, thumb_mpp)
    if thumb is None:
        thumb = slide_thumbnail(reader, l0_mpp=l0_mpp, thumb_mpp=thumb_mpp)
    return overview, thumb


def _thumbnail_from_overview(
    overview: np.ndarray, l0_size: tuple[int, int], l0_mpp: float, thumb_mpp: float
):
    """A ``Thumbnail`` at about ``thumb_mpp`` area-averaged from the overview, or None when
    the overview is coarser than that."""
    from PIL import Image

    from wsi_saliency.slide.tissue import Thumbnail

    t_ds = max(thumb_mpp / l0_mpp, 1.0)  # level-0 px per thumbnail px
    if max(l0_size[0] / overview.shape[1], l0_size[1] / overview.shape[0]) > t_ds:
        return None
    want = (max(1, int(np.ceil(l0_size[0] / t_ds))), max(1, int(np.ceil(l0_size[1] / t_ds))))
    image = np.asarray(Image.fromarray(overview).resize(want, Image.Resampling.BOX))
    l0_per_px = (l0_size[0] / want[0], l0_size[1] / want[1])
    return Thumbnail(image, l0_mpp * (l0_per_px[0] + l0_per_px[1]) / 2, l0_per_px)


def _user_mask(source, shape_rc: tuple[int, int], l0_per_px: tuple[float, float]) -> np.ndarray:
    """A user mask (array, image file or ASAP XML outlines) on the thumbnail grid."""
    if isinstance(source, (str, Path)):
        source = Path(source)
        if source.suffix.lower() == ".xml":
            from wsi_saliency.data.annotations import rasterize, read_asap_xml

            return rasterize(read_asap_xml(source), shape_rc, float(np.mean(l0_per_px)))
        from wsi_saliency.slide.tissue import load_mask

        return load_mask(source, shape_rc)
    return _fit_mask(source, shape_rc)


def _fit_mask(mask: np.ndarray, shape_rc: tuple[int, int]) -> np.ndarray:
    """A user mask resized (nearest) onto the thumbnail grid."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"a mask must be a 2-D image, got shape {mask.shape}")
    if mask.shape == tuple(shape_rc):
        return mask.astype(bool)
    rows = np.minimum(
        (np.arange(shape_rc[0]) + 0.5) * mask.shape[0] / shape_rc[0], mask.shape[0] - 1
    )
    cols = np.minimum(
        (np.arange(shape_rc[1]) + 0.5) * mask.shape[1] / shape_rc[1], mask.shape[1] - 1
    )
    return mask[rows.astype(int)][:, cols.astype(int)].astype(bool)


def check_stride(patch: int, stride: int, cells: int) -> None:
    """Stride must be a whole number of Grad-CAM cells (else stitching cannot align)."""
    if (stride * cells) % patch:
        good = [c for c in range(2, 97) if (stride * c) % patch == 0][:5]
        raise InputError(
            f"--stride {stride} with {cells} Grad-CAM cells per {patch}-px patch does not give "
            f"whole cells per stride: use scan.gradcam_cells in {good}"
        )
