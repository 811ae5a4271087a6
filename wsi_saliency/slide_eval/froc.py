"""Lesion-level FROC, following the official Camelyon16 evaluation (``Evaluation_FROC.py``).

What the official script (Babak Ehteshami Bejnordi, 2016) does, and what is done here:

1. **Evaluation mask** (``computeEvaluationMask``): the ground-truth mask at level 5
   (0.243 um/px x 2**5 = 7.776 um per mask pixel), Euclidean distance to the nearest tumour
   pixel, kept where ``distance < 75 / (7.776 * 2)`` mask pixels (each lesion grown by 37.5 um,
   so lesions closer than 75 um merge), holes filled, 8-connected components labelled 1..n.
   Here the mask pixel is 7.776 um whatever the slide's resolution: level-0 pixels per mask
   pixel = 7.776 / slide mpp (32 at Camelyon16's 0.243 um/px).
2. **Isolated tumour cells** (``computeITCList``): a labelled region is an ITC when
   ``regionprops(...).major_axis_length < 275 / 7.776`` mask pixels (200 um longest diameter
   plus the 75 um growth). Major axis = 4 sqrt(largest eigenvalue of the pixel-coordinate
   covariance), exactly skimage's definition, computed for all regions at once.
3. **Hits** (``compute_FP_TP_Probs``): a detection at level-0 ``(x, y)`` reads the label of mask
   pixel ``[int(y / D), int(x / D)]`` (D = level-0 px per mask pixel). On a tumour slide, label
   0 is a false positive, an ITC label is ignored (neither true nor false positive), any other
   label is a hit on that lesion, whose probability is its best (highest) hit; further hits on
   the same lesion are ignored. On a normal slide every detection is a false positive.
4. **Curve** (``computeFROC``): false positives pooled over all slides (normal ones included)
   and divided by the number of slides; sensitivity = lesions hit at or above the threshold /
   all non-ITC lesions. Thresholds are the distinct probabilities; the point (0, 0) is added.
   The script keeps each lesion's best hit in a float32 array (``TP_probs``) and false
   positives as Python floats, so at a threshold ``t`` a false positive counts when
   ``p >= t`` (float64) and a lesion when ``float32(p) >= float32(t)``: a hit and a false
   positive at the same probability (0.7 and 0.7, 0.99999994 and 0.99999994) count together
   at that threshold, and the thresholds include the float32 lesion values. Both modes do
   exactly this (thresholds in order of value, as under the NumPy 1.x the script needs).
5. **Score**: ``np.interp`` of the curve at 1/4, 1/2, 1, 2, 4, 8 average false positives per
   slide (the curve taken in order of increasing false positives, as the script does, so
   beyond the last point the sensitivity stays at its last value), and their mean.

Deliberate difference (``official_quirks=False``, the default): the official script makes the
missed lesions and the ITC regions probability-0 entries and drops the lowest distinct
probability from the thresholds (``all_probs[1:]``) so that those zeros never count. When no
lesion is missed and there is no ITC, that drops a real detection probability (e.g. a perfect
detector scores sensitivity below 1). Here the thresholds are the distinct probabilities of
real detections (false positives and the float32 values of lesion hits), which gives the same
curve whenever a lesion is missed or an ITC exists and no detection has probability 0 (the
usual case on Camelyon16). ``official_quirks=True`` reproduces the script bit for bit,
including its evaluation mask of a tumour slide whose mask is empty: the distance transform of
an image without a tumour pixel measures (scipy) from the virtual pixel (row -1, col 0), which
leaves a small region at the top-left corner (17 pixels on a grid of at least 4 x 5), an ITC,
so detections there are ignored. By default such a slide has no region (every detection is a
false positive). Also: a detection exactly on probability 0 never hits a lesion (the script
compares ``>`` against an initial 0); kept. A detection outside the mask grid reads label 0
here (the script would index past the array).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CAMELYON16_MPP = 0.243
"""Level-0 microns per pixel of the Camelyon16 slides."""
MASK_LEVEL = 5
"""Pyramid level of the official evaluation mask."""
MASK_UM_PER_PX = CAMELYON16_MPP * 2**MASK_LEVEL
"""Microns per evaluation-mask pixel (7.776)."""
MERGE_DISTANCE_UM = 75.0
"""Lesions closer than this merge into one (each grows by half of it)."""
ITC_MAX_AXIS_UM = 275.0
"""A (grown) region whose major axis is shorter than this is an isolated tumour cell region."""
FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""Average false positives per slide at which the FROC score averages sensitivity."""


@dataclass(frozen=True, eq=False)
class EvaluationMask:
    """Labelled lesions of one tumour slide on the evaluation grid.

    Attributes:
        labels: int32 ``[rows, cols]``, 0 = no lesion, 1..n = grown lesion regions; pixel
            ``(r, c)`` covers level-0 x in ``[c*D, (c+1)*D)``, y in ``[r*D, (r+1)*D)``.
        is_itc: bool ``[n + 1]``, True for isolated-tumour-cell labels (index 0 is False).
        major_axis_um: float64 ``[n + 1]``, major axis of each region in microns (0 for 0).
        l0_per_px: D, level-0 pixels per mask pixel.
        um_per_px: microns per mask pixel.
    """

    labels: np.ndarray
    is_itc: np.ndarray
    major_axis_um: np.ndarray
    l0_per_px: float
    um_per_px: float

    @property
    def n_regions(self) -> int:
        return int(self.is_itc.size - 1)

    @property
    def n_lesions(self) -> int:
        """Regions that must be detected (not ITC)."""
        return int(self.n_regions - self.is_itc[1:].sum())

    @property
    def n_itc(self) -> int:
        return int(self.is_itc[1:].sum())


def major_axis_lengths(labels: np.ndarray, n: int) -> np.ndarray:
    """float64 ``[n + 1]``: skimage ``regionprops(labels)[i].major_axis_length`` for labels 0..n.

    4 sqrt(largest eigenvalue of the population covariance of the region's (row, col)),
    in pixels; entry 0 is 0.
    """
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols]
    count = np.bincount(lab, minlength=n + 1).astype(np.float64)
    safe = np.maximum(count, 1.0)
    mr = np.bincount(lab, rows, minlength=n + 1) / safe
    mc = np.bincount(lab, cols, minlength=n + 1) / safe
    dr = rows - mr[lab]
    dc = cols - mc[lab]
    vrr = np.bincount(lab, dr * dr, minlength=n + 1) / safe
    vcc = np.bincount(lab, dc * dc, minlength=n + 1) / safe
    vrc = np.bincount(lab, dr * dc, minlength=n + 1) / safe
    # Largest eigenvalue of [[vrr, vrc], [vrc, vcc]].
    half_trace = (vrr + vcc) / 2
    lam = half_trace + np.sqrt(np.maximum(((vrr - vcc) / 2) ** 2 + vrc**2, 0.0))
    out = 4.0 * np.sqrt(np.maximum(lam, 0.0))
    out[0] = 0.0
    return out


def evaluation_mask(
    tumour: np.ndarray,
    slide_mpp: float,
    *,
    um_per_px: float = MASK_UM_PER_PX,
    merge_distance_um: float = MERGE_DISTANCE_UM,
    itc_max_axis_um: float = ITC_MAX_AXIS_UM,
    official_quirks: bool = False,
) -> EvaluationMask:
    """Grow, fill and label the lesions of a tumour mask; mark the ITC regions.

    Args:
        tumour: bool ``[rows, cols]`` on the evaluation grid (``um_per_px`` microns per pixel),
            True on tumour (annotations minus exclusions).
        slide_mpp: level-0 microns per pixel of the slide (maps detections onto the grid).
        um_per_px: microns per mask pixel (Camelyon16: 0.243 x 32 = 7.776).
        merge_distance_um: lesions closer than this merge (75 um).
        itc_max_axis_um: regions with a shorter major axis are ITC (275 um).
        official_quirks: an empty ``tumour`` gets the script's ITC region at the top-left
            corner (see the module docstring) instead of no region.
    """
    from scipy import ndimage as ndi

    tumour = np.asarray(tumour, dtype=bool)
    if tumour.any() or official_quirks:
        # (Empty tumour: scipy measures from a virtual pixel (row -1, col 0), as in the script.)
        distance = ndi.distance_transform_edt(~tumour)
        grown = distance < merge_distance_um / (um_per_px * 2)
        filled = ndi.binary_fill_holes(grown)
        labels, n = ndi.label(filled, structure=np.ones((3, 3), dtype=bool))
        labels = labels.astype(np.int32)
    else:
        labels, n = np.zeros(tumour.shape, np.int32), 0
    axis_px = major_axis_lengths(labels, n)
    is_itc = axis_px < itc_max_axis_um / um_per_px
    is_itc[0] = False
    return EvaluationMask(
        labels=labels,
        is_itc=is_itc,
        major_axis_um=axis_px * um_per_px,
        l0_per_px=float(um_per_px / slide_mpp),
        um_per_px=float(um_per_px),
    )


@dataclass(frozen=True, eq=False)
class SlideHits:
    """One slide's detections sorted into false positives and lesion hits.

    Attributes:
        fp_probs: float64 ``[F]``, probabilities of the false positives.
        lesion_probs: float64 ``[L]``, best probability per non-ITC lesion (0 = missed).
        n_itc_regions: ITC regions on the slide.
        n_ignored: detections that fell on an ITC region (neither true nor false positive).
        hit_label: int64 ``[N]``, the label each detection read (0 = none; normal slides 0).
        is_tumour: the slide has lesions to find.
    """

    fp_probs: np.ndarray
    lesion_probs: np.ndarray
    n_itc_regions: int
    n_ignored: int
    hit_label: np.ndarray
    is_tumour: bool

    @property
    def n_lesions(self) -> int:
        return int(self.lesion_probs.size)

    @property
    def n_hit(self) -> int:
        return int(np.count_nonzero(self.lesion_probs > 0))


def match_detections(
    probs: np.ndarray, l0_xy: np.ndarray, mask: EvaluationMask | None
) -> SlideHits:
    """Sort one slide's detections (``probs`` float ``[N]``, level-0 ``l0_xy`` ``[N, 2]``).

    ``mask`` None means a normal slide: every detection is a false positive.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    l0_xy = np.asarray(l0_xy, dtype=np.float64).reshape(-1, 2)
    if mask is None:
        return SlideHits(
            fp_probs=probs.copy(),
            lesion_probs=np.zeros(0),
            n_itc_regions=0,
            n_ignored=0,
            hit_label=np.zeros(probs.size, np.int64),
            is_tumour=False,
        )
    h, w = mask.labels.shape
    # int() truncation as in the official script (coordinates are non-negative).
    cols = np.floor(l0_xy[:, 0] / mask.l0_per_px).astype(np.int64)
    rows = np.floor(l0_xy[:, 1] / mask.l0_per_px).astype(np.int64)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    hit = np.zeros(probs.size, np.int64)
    hit[inside] = mask.labels[rows[inside], cols[inside]]
    itc = mask.is_itc[hit]
    lesion = (hit > 0) & ~itc
    best = np.zeros(mask.n_regions + 1)
    np.maximum.at(best, hit[lesion], probs[lesion])
    keep = ~mask.is_itc
    keep[0] = False
    return SlideHits(
        fp_probs=probs[hit == 0],
        lesion_probs=best[keep],
        n_itc_regions=mask.n_itc,
        n_ignored=int(np.count_nonzero((hit > 0) & itc)),
        hit_label=hit,
        is_tumour=True,
    )


@dataclass(frozen=True, eq=False)
class FrocCurve:
    """Pooled FROC curve, in order of increasing threshold, ending at the added (0, 0) point.

    ``thresholds`` float64 ``[T + 1]`` (last is +inf), ``avg_fp`` false positives per slide,
    ``sensitivity`` fraction of lesions hit; ``n_slides``, ``n_lesions``, ``n_fp`` (all false
    positives), ``n_tp`` (lesions hit at any threshold).
    """

    thresholds: np.ndarray
    avg_fp: np.ndarray
    sensitivity: np.ndarray
    n_slides: int
    n_lesions: int
    n_fp: int
    n_tp: int

    def sensitivity_at(self, fp_rates: Sequence[float] = FP_RATES) -> np.ndarray:
        """Sensitivity interpolated at average false positives per slide (official np.interp)."""
        if self.n_lesions == 0:
            return np.full(len(fp_rates), np.nan)
        return np.interp(np.asarray(fp_rates, float), self.avg_fp[::-1], self.sensitivity[::-1])

    def score(self, fp_rates: Sequence[float] = FP_RATES) -> float:
        """The FROC score: mean sensitivity at ``fp_rates`` (NaN when there is no lesion)."""
        return float(np.mean(self.sensitivity_at(fp_rates)))


def froc_curve(slides: Sequence[SlideHits], *, official_quirks: bool = False) -> FrocCurve:
    """Pool the slides' hits into the FROC curve (see the module docstring for the rules)."""
    if not slides:
        raise ValueError("froc_curve needs at least one slide")
    fp = np.sort(np.concatenate([s.fp_probs for s in slides]))
    # The script's float32 TP_probs: lesions compare with each threshold in float32.
    lesions = np.concatenate([s.lesion_probs for s in slides]).astype(np.float32)
    tp = np.sort(lesions[lesions > 0])
    if official_quirks:
        itc_zeros = np.zeros(sum(s.n_itc_regions for s in slides))
        every = np.unique(np.concatenate([fp, lesions.astype(np.float64), itc_zeros]))
        thresholds = every[1:]
    else:
        thresholds = np.unique(np.concatenate([fp, tp.astype(np.float64)]))
    n_fp = fp.size - np.searchsorted(fp, thresholds, side="left")
    n_tp = tp.size - np.searchsorted(tp, thresholds.astype(np.float32), side="left")
    n_slides, n_lesions = len(slides), int(lesions.size)
    avg_fp = np.r_[n_fp, 0] / n_slides
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.r_[n_tp, 0] / n_lesions if n_lesions else np.full(avg_fp.size, np.nan)
    return FrocCurve(
        thresholds=np.r_[thresholds, np.inf],
        avg_fp=avg_fp.astype(np.float64),
        sensitivity=np.asarray(sensitivity, np.float64),
        n_slides=n_slides,
        n_lesions=n_lesions,
        n_fp=int(fp.size),
        n_tp=int(tp.size),
    )
