"""Which pyramid level to read, and how to resample it, for a model trained at ``target_mpp``.

Planes: level 0 (``l0_``), the read level (``lv_``) and the target plane (``t_``) at the
model's resolution. ``l0_per_t`` is level-0 pixels per target pixel, so a patch of ``P``
target pixels covers ``P * l0_per_t`` level-0 pixels. Pure: no OpenSlide import; the reader
is anything with ``mpp``, ``objective_power`` and ``level_downsamples`` (a ``SlideReader``).

The level is chosen by resolution, not with OpenSlide's ``get_best_level_for_downsample``
(on a 1/2/4 pyramid it returns the 2x level for a downsample of 3.88, i.e. a much finer and
costlier read than the 4x level that is within 3 % of the target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from wsi_saliency.errors import InputError, SlideError

__all__ = ["ResolutionPlan", "plan_resolution", "slide_mpp_of"]

PCAM_MPP = 0.972
"""PatchCamelyon patches: 96 x 96 px at 0.972 microns per pixel (10x)."""


@dataclass(frozen=True)
class ResolutionPlan:
    """How to produce target-plane pixels from one pyramid level.

    level: the pyramid level read. l0_mpp / lv_mpp: microns per pixel of level 0 and of the
    read level. target_mpp: the resolution asked for. t_mpp: the resolution of the target
    plane actually produced (equal to ``target_mpp`` unless the level was within
    ``tolerance`` and snapped, then ``lv_mpp``). lv_per_t / l0_per_t: level / level-0 pixels
    per target pixel. needs_resample: False when the level is used as is (``lv_per_t == 1``).
    warning: a line for the user when the resolution is a guess or unusual, else None.
    """

    level: int
    l0_mpp: float
    lv_mpp: float
    target_mpp: float
    t_mpp: float
    lv_per_t: float
    l0_per_t: float
    lv_downsample: float
    needs_resample: bool
    mpp_source: str
    warning: str | None = None

    def l0_size(self, t_pixels: float) -> float:
        """Level-0 pixels covered by ``t_pixels`` target pixels."""
        return t_pixels * self.l0_per_t

    def describe(self) -> str:
        """One line for logs: level, mpps and the resampling factor."""
        how = f"resampled x{1 / self.lv_per_t:.3f}" if self.needs_resample else "read as is"
        return (
            f"level {self.level} ({self.lv_mpp:.4g} um/px, level 0 {self.l0_mpp:.4g} um/px "
            f"from {self.mpp_source}) -> {self.t_mpp:.4g} um/px, {how}; "
            f"{self.l0_per_t:.4g} level-0 px per target px"
        )


def slide_mpp_of(
    reader: Any, slide_mpp: float | None = None, *, path: str | None = None
) -> tuple[float, str, str | None]:
    """Level-0 mpp of a slide: ``(mpp, source, warning)``; ``SlideError`` when unknown.

    Order: the ``slide_mpp`` override, ``openslide.mpp-x/y``, then ``10 / objective power``.
    """
    name = path or getattr(reader, "path", "the slide")
    if slide_mpp is not None:
        if not (isinstance(slide_mpp, (int, float)) and math.isfinite(slide_mpp) and slide_mpp > 0):
            raise InputError(
                f"--slide-mpp must be a positive number of microns per pixel, got {slide_mpp!r}"
            )
        return float(slide_mpp), "--slide-mpp", None
    mpp = reader.mpp
    if mpp is not None:
        mx, my = float(mpp[0]), float(mpp[1])
        warning = None
        if abs(mx - my) > 0.01 * max(mx, my):
            warning = (
                f"{name}: pixels are not square (mpp-x {mx:.4g}, mpp-y {my:.4g}); "
                f"using their mean {(mx + my) / 2:.4g} um/px"
            )
        return (mx + my) / 2, "openslide.mpp-x/y", warning
    objective = reader.objective_power
    if objective is not None:
        guess = 10.0 / objective
        return (
            guess,
            "objective power",
            f"{name} has no openslide.mpp-x/y; guessed {guess:.4g} um/px from its "
            f"{objective:g}x objective (scanners differ by up to ~20 %); pass --slide-mpp "
            "if you know the real value",
        )
    raise SlideError(
        f"{name} records no resolution (no openslide.mpp-x/y, no objective power); "
        "pass --slide-mpp MICRONS_PER_PIXEL (e.g. 0.25 for 40x, 0.5 for 20x)"
    )


def plan_resolution(
    reader: Any,
    target_mpp: float = PCAM_MPP,
    *,
    slide_mpp: float | None = None,
    tolerance: float = 0.05,
    snap: bool = True,
    force_level: int | None = None,
) -> ResolutionPlan:
    """Pick the read level and resampling that turn the slide into ``target_mpp`` pixels.

    The level is the coarsest whose mpp is finer than the target or within ``tolerance``
    (relative) of it. With ``snap`` a level within ``tolerance`` is used as is (no
    resampling; the target plane is then at the level's mpp). ``force_level`` overrides the
    choice (benchmarks, debugging). Raises ``SlideError`` when the slide is coarser than
    the target beyond ``tolerance`` at every level.
    """
    if not (math.isfinite(target_mpp) and target_mpp > 0):
        raise InputError(f"target resolution must be a positive mpp, got {target_mpp!r}")
    if not 0 <= tolerance < 1:
        raise InputError(f"resolution tolerance must be in [0, 1), got {tolerance!r}")
    name = getattr(reader, "path", "the slide")
    l0_mpp, source, warning = slide_mpp_of(reader, slide_mpp)
    downsamples = [float(d) for d in reader.level_downsamples]
    lv_mpps = [l0_mpp * d for d in downsamples]

    if force_level is not None:
        if not 0 <= force_level < len(downsamples):
            raise InputError(
                f"level {force_level} does not exist in {name} (levels 0-{len(downsamples) - 1})"
            )
        level = force_level
    else:
        fits = [i for i, m in enumerate(lv_mpps) if m <= target_mpp * (1 + tolerance)]
        if not fits:
            listed = ", ".join(f"level {i}: {m:.4g}" for i, m in enumerate(lv_mpps))
            closest = min(range(len(lv_mpps)), key=lambda i: abs(lv_mpps[i] - target_mpp))
            raise SlideError(
                f"{name} is too coarse for {target_mpp:.4g} um/px: its levels are {listed} "
                f"um/px (closest: level {closest} at {lv_mpps[closest]:.4g}, from {source}); "
                "use a slide scanned at a finer resolution or check --slide-mpp"
            )
        level = max(fits, key=lambda i: (lv_mpps[i], -i))

    lv_mpp = lv_mpps[level]
    lv_per_t = target_mpp / lv_mpp
    if snap and abs(lv_per_t - 1.0) <= tolerance:
        t_mpp, lv_per_t, needs_resample = lv_mpp, 1.0, False
    else:
        t_mpp, needs_resample = float(target_mpp), True
    return ResolutionPlan(
        level=level,
        l0_mpp=l0_mpp,
        lv_mpp=lv_mpp,
        target_mpp=float(target_mpp),
        t_mpp=t_mpp,
        lv_per_t=lv_per_t,
        l0_per_t=t_mpp / l0_mpp,
        lv_downsample=downsamples[level],
        needs_resample=needs_resample,
        mpp_source=source,
        warning=warning,
    )
