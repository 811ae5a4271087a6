"""Choosing the read level and the resampling for the model's resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.errors import InputError, SlideError
from wsi_saliency.slide.reader import ArrayReader, open_slide
from wsi_saliency.slide.resolution import PCAM_MPP, plan_resolution


def _reader(mpp, levels=(1, 2, 4), **kw) -> ArrayReader:
    return ArrayReader(
        np.full((64, 64, 3), 200, np.uint8), mpp, levels=levels, name="syn.svs", **kw
    )


def test_40x_picks_the_4x_level_and_reads_it_as_is() -> None:
    # openslide's get_best_level_for_downsample(3.888) would return the 2x level here
    plan = plan_resolution(_reader(0.25), PCAM_MPP)
    assert plan.level == 2
    assert plan.lv_mpp == pytest.approx(1.0)
    assert not plan.needs_resample
    assert plan.lv_per_t == 1.0
    assert plan.l0_per_t == pytest.approx(4.0)
    assert plan.t_mpp == pytest.approx(1.0)
    assert plan.target_mpp == PCAM_MPP
    assert plan.warning is None
    assert "level 2" in plan.describe()


def test_without_snap_the_level_is_resampled() -> None:
    plan = plan_resolution(_reader(0.25), PCAM_MPP, snap=False)
    assert plan.level == 2 and plan.needs_resample
    assert plan.lv_per_t == pytest.approx(0.972)
    assert plan.l0_per_t == pytest.approx(3.888)


def test_20x_slide() -> None:
    plan = plan_resolution(_reader(0.5), PCAM_MPP)
    assert (plan.level, plan.needs_resample) == (1, False)
    assert plan.l0_per_t == pytest.approx(2.0)


def test_cmu_like_single_level_is_resampled() -> None:
    plan = plan_resolution(_reader(0.499, levels=(1,)), PCAM_MPP)
    assert plan.level == 0 and plan.needs_resample
    assert plan.lv_per_t == pytest.approx(0.972 / 0.499)
    assert 96 * plan.l0_per_t == pytest.approx(187, rel=0.01)
    assert plan.l0_size(96) == pytest.approx(96 * 0.972 / 0.499)


def test_finer_level_is_used_when_the_coarser_one_is_out_of_tolerance() -> None:
    # levels at 0.23, 0.92, 3.68 um/px: 0.92 is finer than 0.972 by 5.4 % -> resample it
    plan = plan_resolution(_reader(0.23, levels=(1, 4, 16)), PCAM_MPP)
    assert plan.level == 1 and plan.needs_resample
    assert plan.lv_per_t == pytest.approx(0.972 / 0.92)
    # a level coarser than the target but within tolerance is acceptable
    plan = plan_resolution(_reader(0.255, levels=(1, 4, 16)), PCAM_MPP)
    assert plan.level == 1 and not plan.needs_resample


def test_mpp_sources_and_warnings() -> None:
    plan = plan_resolution(_reader(None, objective_power=20), PCAM_MPP)
    assert plan.l0_mpp == pytest.approx(0.5)
    assert plan.mpp_source == "objective power"
    assert "--slide-mpp" in plan.warning and "20x" in plan.warning
    plan = plan_resolution(_reader(None, objective_power=20), PCAM_MPP, slide_mpp=0.25)
    assert plan.l0_mpp == 0.25 and plan.mpp_source == "--slide-mpp" and plan.warning is None
    plan = plan_resolution(_reader((0.24, 0.26)), PCAM_MPP)
    assert plan.l0_mpp == pytest.approx(0.25) and "square" in plan.warning


def test_missing_resolution_names_the_option() -> None:
    with pytest.raises(SlideError) as info:
        plan_resolution(_reader(None), PCAM_MPP)
    assert "--slide-mpp" in str(info.value) and "syn.svs" in str(info.value)


def test_too_coarse_lists_levels() -> None:
    with pytest.raises(SlideError) as info:
        plan_resolution(_reader(2.0), PCAM_MPP)
    msg = str(info.value)
    assert "level 0: 2" in msg and "level 2: 8" in msg and "closest: level 0" in msg
    assert "\n" not in msg


def test_bad_options() -> None:
    for kwargs in ({"slide_mpp": -1.0}, {"tolerance": 2.0}, {"force_level": 7}):
        with pytest.raises(InputError):
            plan_resolution(_reader(0.25), PCAM_MPP, **kwargs)
    with pytest.raises(InputError):
        plan_resolution(_reader(0.25), 0.0)


def test_force_level() -> None:
    plan = plan_resolution(_reader(0.25), PCAM_MPP, force_level=0)
    assert plan.level == 0 and plan.needs_resample
    assert plan.lv_per_t == pytest.approx(3.888)


@pytest.mark.realdata
def test_cmu_patch_covers_187_level0_pixels(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as r:
        plan = plan_resolution(r, PCAM_MPP)
    assert plan.level == 0 and plan.l0_mpp == pytest.approx(0.499)
    assert 96 * plan.l0_per_t == pytest.approx(187, rel=0.01)
