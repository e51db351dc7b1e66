"""Build a rest-eval test-set manifest (``eval/manifest.py`` describes the format).

    python -m eval.build_manifest VIDEO_DIR OUT.json [--name hdtf_test] [--fps 25] [--sample-rate 16000]
    python -m eval.build_manifest PREP_OUTPUT OUT_DIR --split test     # rest-prep shards -> OUT_DIR/testset.json

A folder of videos gives one item per video (audio from its track, reference = its first frame); a
rest-prep output folder gives one item per clip of the split (its own reference image).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eval.manifest import (
    ManifestError,
    build_manifest_from_shards,
    build_manifest_from_videos,
    is_prep_output,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.build_manifest", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a folder of videos, or a rest-prep output folder")
    parser.add_argument("out", help="manifest .json (videos) or output folder (rest-prep shards)")
    parser.add_argument("--split", default="test", help="rest-prep split to export (default: test)")
    parser.add_argument("--name", default=None, help="test-set name recorded in results")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args(argv)
    source = Path(args.source)
    try:
        if is_prep_output(source):
            path = build_manifest_from_shards(source, args.split, args.out, args.name)
        else:
            path = build_manifest_from_videos(source, args.out, args.name, args.fps, args.sample_rate)
    except ManifestError as err:
        print(f"build_manifest: error: {err}", file=sys.stderr)
        return 2
    print(f"build_manifest: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
