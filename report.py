"""Gather runs and sweeps into one report: `python report.py logs/attack/multiruns/... [--out report]`.

Writes report.md, attacks.csv, training.csv, robustness_curves.png, rate_distortion.png,
finetuning.png and a self-contained report.html.
"""

import argparse
from pathlib import Path

from rnic.report import build_report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run or sweep folders of train.py / attack.py")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: report)")
    args = parser.parse_args()
    found = build_report(args.runs, args.out)
    print(
        f"{len(found['attacks'])} attack result(s), {len(found['trainings'])} training run(s), "
        f"{len(found['failed'])} failed job(s): {args.out / 'report.html'}"
    )


if __name__ == "__main__":
    main()
