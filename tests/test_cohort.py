"""Cohort runs: ``cohort.csv`` after interrupted runs and their reruns equals a clean run's."""

import types

import pytest

from wsi_saliency.config import ScanConfig
from wsi_saliency.scan import cohort, pipeline
from wsi_saliency.scan.cohort import scan_cohort

MPP = 0.486  # 2 level-0 px per model px, as in test_scan.py


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three small synthetic slides with different lesions (so different scores)."""
    from conftest import write_cohort_slides

    folder = tmp_path_factory.mktemp("cohort_slides")
    paths = write_cohort_slides(folder, MPP)
    return paths


@pytest.fixture
def steady_clock(monkeypatch):
    """Each slide takes 'the same time' (the cohort module's clock ticks 1 s per reading), so
    whole cohort.csv files of different runs can be compared."""
    ticks = iter(range(10**6))
    fake = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    monkeypatch.setattr(cohort, "time", fake)
    # a layout made ahead (in another thread) counts its own seconds into the slide's: none
    monkeypatch.setattr(pipeline, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))


def _interrupt_at(monkeypatch, stem):
    """Make the scan of slide ``stem`` die like a killed process (KeyboardInterrupt)."""
    real = pipeline.scan_slide

    def scan_slide(slide, *args, **kwargs):
        if slide.stem == stem:
            raise KeyboardInterrupt
        return real(slide, *args, **kwargs)

    monkeypatch.setattr(pipeline, "scan_slide", scan_slide)


def test_cohort_csv_after_interruptions_equals_a_clean_run(
    slides, tiny_model, tmp_path, steady_clock
):
    cfg = ScanConfig(workers=1)
    run = dict(progress=False, log=lambda m: None)
    clean = tmp_path / "clean"
    scan_cohort(slides, tiny_model, clean, cfg, **run)
    expected = (clean / "cohort.csv").read_text()

    out = tmp_path / "resumed"
    for stem in ("b", "c"):  # killed while scanning b, then (rerun) while scanning c
        with pytest.MonkeyPatch.context() as mp:
            _interrupt_at(mp, stem)
            with pytest.raises(KeyboardInterrupt):
                scan_cohort(slides, tiny_model, out, cfg, **run)
    rows = scan_cohort(slides, tiny_model, out, cfg, **run)

    assert [r.status for r in rows] == ["skipped", "skipped", "done"]  # what this run did
    assert (out / "cohort.csv").read_text() == expected
    lines = expected.splitlines()
    assert len(lines) == 4 and all(",done," in line for line in lines[1:])
    assert all(line.split(",")[2] and line.split(",")[4] for line in lines[1:])  # figures


def test_slides_are_laid_out_one_ahead_of_the_model(slides, monkeypatch):
    """The first layout starts at once (beside the model's loading); each next one when the
    slide before it is handed over; never further ahead."""
    import threading

    calls = []
    started = {slide.stem: threading.Event() for slide in slides}

    def lay_out_slide(slide, card, cfg, **masks):
        calls.append(slide.stem)
        started[slide.stem].set()
        return slide.stem

    monkeypatch.setattr(pipeline, "lay_out_slide", lay_out_slide)
    ahead = cohort.LayoutsAhead(slides, None, ScanConfig(), lambda slide: {})
    try:
        assert started["a"].wait(10)
        assert calls == ["a"]
        assert ahead.take(slides[0]).result() == "a"
        assert started["b"].wait(10)
        assert calls == ["a", "b"]  # started when a was handed over, not c yet
        assert ahead.take(slides[1]).result() == "b"
        assert ahead.take(slides[2]).result() == "c"
        assert calls == ["a", "b", "c"]
    finally:
        ahead.close()
    twice = cohort.LayoutsAhead([slides[0], slides[0]], None, ScanConfig(), lambda slide: {})
    try:  # a slide listed twice (a notebook's list) is laid out twice, in order
        assert [twice.take(slides[0]).result() for _ in range(2)] == ["a", "a"]
    finally:
        twice.close()
