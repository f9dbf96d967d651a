"""Gather runs and sweeps into one report: `python report.py logs/attack/multiruns/... [--out report]`.

Writes report.md, attacks.csv, training.csv, robustness_curves.png, rate_distortion.png,
finetuning.png and a self-contained report.html. `python report.py --check RUN...` checks that each
run's model card (card.json) still describes its folder: weights hash, figures, image count.
`--transfer` also codes every saved adversarial set below the folders with every one of their codecs
(transfer_matrix.csv, transfer_matrix.png, a section of report.html).
"""

import argparse
import os
import sys
from pathlib import Path

from rnic.jobs import USER_ERRORS, quiet_third_party

quiet_third_party()  # before CompressAI's import warns
from rnic.evaluation.checks import check_card  # noqa: E402
from rnic.report import build_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run or sweep folders of train.py / attack.py")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: report)")
    parser.add_argument("--check", action="store_true", help="check each run's card.json against its folder")
    parser.add_argument(
        "--transfer",
        action="store_true",
        help="code every saved adversarial set below RUNS with every one of their codecs: a transfer matrix",
    )
    args = parser.parse_args()
    try:
        run(args)
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        sys.exit(1)


def run(args: argparse.Namespace) -> None:
    if args.check:
        problems = [problem for run in args.runs for problem in check_card(run)]
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            sys.exit(1)
        print(f"{len(args.runs)} card(s) match their run folders")
        return
    transfer = None
    if args.transfer:
        from rnic.report.transfer import transfer_matrix

        transfer = transfer_matrix(args.runs, args.out)
    found = build_report(args.runs, args.out, transfer=transfer)
    print(
        f"{len(found['attacks'])} attack result(s), {len(found['trainings'])} training run(s), "
        f"{len(found['failed'])} failed job(s): {args.out / 'report.html'}"
    )


if __name__ == "__main__":
    main()
