#!/usr/bin/env python
"""Rebuild the bundled sample data from its authored sources (deterministic: same sources, same files).

Usage: python scripts/build_sample_data.py [--out DATA_ROOT] [--no-arrow]
Default output is the package's own data root (src/kormed/sample_data), i.e. the files that are committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from kormed.sample_data import sample_data_root
    from kormed.sample_data._build import build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="data root to write (default: the bundled one)")
    parser.add_argument("--no-arrow", action="store_true", help="only the JSON/JSONL files, not the Arrow datasets")
    args = parser.parse_args()
    out = args.out or sample_data_root()
    counts = build(out, arrow=not args.no_arrow)
    for name, n in counts.items():
        print(f"{name:24s} {n:5d}")
    print(f"written under {out}")


if __name__ == "__main__":
    main()
