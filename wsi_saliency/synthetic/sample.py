"""``python -m wsi_saliency.synthetic FOLDER``: regenerate the committed sample data.

Writes the PCam-layout patch splits in ``FOLDER/pcam`` (:mod:`wsi_saliency.synthetic.patches`)
and the demo slide in ``FOLDER/slide`` (:mod:`wsi_saliency.synthetic.slides`), seed 0 unless told.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wsi_saliency.synthetic.patches import write_sample_dataset
from wsi_saliency.synthetic.slides import make_sample_slide


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the sample data; returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m wsi_saliency.synthetic",
        description="Write the synthetic sample data: PCam-layout patch "
        "splits in FOLDER/pcam and the demo slide in "
        "FOLDER/slide.",
    )
    ap.add_argument("folder", type=Path, help="output folder, e.g. sample_data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-valid", type=int, default=128)
    ap.add_argument("--n-test", type=int, default=128)
    ap.add_argument("--no-slide", action="store_true", help="only the patch splits")
    ap.add_argument("--no-patches", action="store_true", help="only the slide")
    args = ap.parse_args(argv)
    if not args.no_patches:
        t0 = time.perf_counter()
        paths = write_sample_dataset(
            args.folder / "pcam",
            n_train=args.n_train,
            n_valid=args.n_valid,
            n_test=args.n_test,
            seed=args.seed,
        )
        print(
            f"patches: {len(paths)} files in {args.folder / 'pcam'} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    if not args.no_slide:
        t0 = time.perf_counter()
        info = make_sample_slide(args.folder / "slide", seed=args.seed)
        print(
            f"slide: {info.path} {info.l0_size_xy[0]}x{info.l0_size_xy[1]} px at "
            f"{info.mpp} mpp, {len(info.lesions)} lesions ({time.perf_counter() - t0:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
