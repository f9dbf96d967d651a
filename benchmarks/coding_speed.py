"""Real encode and decode time of rnic's shipped CPU codecs side by side, as ratios to the first one.

The architecture study (benchmarks/architectures.py) times each row in its own run; on a shared machine
those absolute times move with the load. Here the codecs take turns on the same photos, round after
round, and each prints its median time per image and its ratio to the first codec's, measured under the
same load.

    python benchmarks/coding_speed.py [--arch ARCH ...] [--quality 2] [--rounds 5] [--images 4] [--crop 256]

Default: every shipped architecture (`rnic.codecs.SHIPPED`) at quality 2, on the sample val photos.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from architectures import val_photos  # benchmarks/, beside this script

from rnic.codecs import SHIPPED, build_codec
from rnic.evaluation.pairs import coding_time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", nargs="+", default=list(SHIPPED), choices=list(SHIPPED))
    parser.add_argument("--quality", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="turns each codec takes on every photo")
    parser.add_argument("--images", type=int, default=4, help="the first N val photos")
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args()
    _, x = val_photos(args.images, args.crop)
    codecs = {}
    for arch in args.arch:
        codecs[arch] = build_codec(arch, quality=args.quality, pretrained=True).eval()
        codecs[arch].update(force=True)
    times = {arch: ([], []) for arch in codecs}  # per image and round: encode, decode [s]
    with torch.no_grad():
        for _ in range(args.rounds):
            for arch, codec in codecs.items():
                for i in range(len(x)):
                    encode, decode = coding_time(codec, x[i : i + 1])
                    times[arch][0].append(encode)
                    times[arch][1].append(decode)
    medians = {arch: tuple(statistics.median(t) for t in pair) for arch, pair in times.items()}
    first = medians[args.arch[0]]
    print(
        f"quality {args.quality}, {len(x)} val photos ({args.crop}x{args.crop}), {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads; median per image, ratio to {args.arch[0]}"
    )
    print(f"{'codec':<26} {'encode [s]':>10} {'ratio':>6} {'decode [s]':>10} {'ratio':>6}")
    for arch, (encode, decode) in medians.items():
        print(
            f"{arch:<26} {encode:>10.4f} {encode / first[0]:>6.2f} {decode:>10.4f} {decode / first[1]:>6.2f}"
        )


if __name__ == "__main__":
    main()
