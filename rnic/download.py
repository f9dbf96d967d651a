"""Download the evaluation and training sets into `$RNIC_DATA_DIR` (else ./data), laid out as `data=kodak`,
`data=clic`, `data=div2k` and `data=tecnick` read them: `rnic-data download kodak` (also
`rnic data download ...` and `python -m rnic.data download ...`).

Every file is checked by SHA-256. None of these sets publishes SHA-256 sums, so the first download of a
file records its hash in `<data dir>/checksums.json` (trust on first use, said on the console) and every
later download of that URL into that data folder must match it. An interrupted download resumes where it
stopped (HTTP Range) from its `.part` file. Archives are kept in `<data dir>/downloads/` unless
`--remove-archives`; only their images are extracted, flattened into the set's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from rnic.io import file_sha256, write_json

MANIFEST = "checksums.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # as rnic.data reads
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One file to fetch: an image saved as `into/<its name>`, or an archive whose images (those whose path
    inside it contains `members`, if given) are extracted into `into`, a folder of the set's own folder."""

    url: str
    into: str = "."
    sha256: str | None = None  # None: no published sum; trusted on first use and recorded
    members: str | None = None

    @property
    def name(self) -> str:
        """The file name to store it under (sourceforge's URLs end in /download)."""
        path = PurePosixPath(urllib.parse.urlparse(self.url).path)
        return path.parent.name if path.name == "download" else path.name

    @property
    def is_archive(self) -> bool:
        return self.name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2"))


KODAK = "https://r0k.us/graphics/kodak/kodak/kodim{:02d}.png"
# Each set: (its folder under the data dir, as rnic/conf/data/<name>.yaml reads it; what to fetch).
DATASETS: dict[str, tuple[str, tuple[Remote, ...]]] = {
    "kodak": ("kodak", tuple(Remote(KODAK.format(i)) for i in range(1, 25))),
    "clic": ("clic", (  # CLIC 2020 professional, from the challenge's host at ETH Zurich (no test set there)
        Remote("https://data.vision.ee.ethz.ch/cvl/clic/professional_train_2020.zip", into="train"),
        Remote("https://data.vision.ee.ethz.ch/cvl/clic/professional_valid_2020.zip", into="valid"),
    )),
    "div2k": ("div2k", (
        Remote("https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip", into="DIV2K_train_HR"),
        Remote("https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip", into="DIV2K_valid_HR"),
    )),
    # TESTIMAGES (Asuni & Giachetti): the 100 RGB 1200x1200 images of the SAMPLING set.
    "tecnick": ("tecnick", (
        Remote("https://sourceforge.net/projects/testimages/files/OLD/OLD_SAMPLING/testimages.zip/download",
               members="RGB_OR_1200x1200/"),
    )),
}  # fmt: skip


def data_dir() -> Path:
    """Where `paths.data_dir` points by default (rnic/conf/paths/default.yaml)."""
    return Path(os.environ.get("RNIC_DATA_DIR") or Path.cwd() / "data")


class Manifest:
    """`checksums.json`: the SHA-256 first seen for each URL whose publisher gives none."""

    def __init__(self, folder: Path):
        self.path = folder / MANIFEST
        self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def expected(self, remote: Remote) -> str | None:
        return remote.sha256 or (self.entries.get(remote.url) or {}).get("sha256")

    def record(self, remote: Remote, digest: str, size: int) -> None:
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.entries[remote.url] = {"sha256": digest, "bytes": size, "first_download": when}
        write_json(self.path, self.entries)
        print(f"{remote.url}: no published SHA-256; recorded {digest} in {self.path} (trust on first use: "
              "every later download of it into this data folder must match)")  # fmt: skip


def fetch(remote: Remote, dest: Path, manifest: Manifest, timeout: float = 60.0) -> Path:
    """`remote` saved as `dest`, checked: resumed from `dest.part` if a download stopped, refused (and the
    bad file removed) if its SHA-256 is not the expected one."""
    if dest.is_file():
        check(remote, dest, manifest)
        return dest
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "rnic", **({"Range": f"bytes={start}-"} if start else {})}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(remote.url, headers=headers), timeout=timeout
        ) as r:
            resumed = start > 0 and r.status == 206  # a server that ignores Range sends the whole file
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(r, out, CHUNK)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not start:  # 416: the part already holds the whole file
            raise OSError(f"{remote.url}: HTTP {err.code} {err.reason}") from None
    check(remote, part, manifest)
    os.replace(part, dest)
    return dest


def check(remote: Remote, path: Path, manifest: Manifest) -> None:
    digest, expected = file_sha256(path), manifest.expected(remote)
    if expected is None:
        manifest.record(remote, digest, path.stat().st_size)
    elif digest != expected:
        path.unlink()
        raise ValueError(
            f"{path}: SHA-256 {digest} is not the expected {expected} ({remote.url}); the file was removed "
            "(a corrupt or changed download: run the command again to fetch it anew)"
        )


def extract_images(archive: Path, folder: Path, members: str | None) -> int:
    """The archive's images (path containing `members`, if given) written flat into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            entries = [(i.filename, lambda i=i: z.open(i)) for i in z.infolist() if not i.is_dir()]
            count = write_images(entries, folder, members)
    else:
        with tarfile.open(archive) as t:
            entries = [(m.name, lambda m=m: t.extractfile(m)) for m in t.getmembers() if m.isfile()]
            count = write_images(entries, folder, members)
    if count == 0:
        raise ValueError(f"{archive}: no images{f' under {members!r}' if members else ''} in the archive")
    return count


def write_images(entries, folder: Path, members: str | None) -> int:
    count = 0
    for name, open_member in entries:
        base = PurePosixPath(name).name  # flattened: no path from the archive reaches the file system
        if not base.lower().endswith(IMAGE_SUFFIXES) or (members and members not in name):
            continue
        with open_member() as src, open(folder / base, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        count += 1
    return count


def download(name: str, root: Path | None = None, remove_archives: bool = False) -> Path:
    """Fetch data set `name` into `root` (default: `data_dir()`); returns its folder."""
    if name not in DATASETS:
        raise ValueError(f"data set {name!r} is not one rnic downloads; choose one of {', '.join(DATASETS)}")
    root = Path(root) if root is not None else data_dir()
    folder_name, remotes = DATASETS[name]
    folder, manifest = root / folder_name, Manifest(root)
    for remote in remotes:
        if not remote.is_archive:
            fetch(remote, folder / remote.into / remote.name, manifest)
            continue
        done = folder / remote.into / f".{remote.name}.extracted"
        if done.is_file():
            continue
        archive = fetch(remote, root / "downloads" / remote.name, manifest)
        count = extract_images(archive, folder / remote.into, remote.members)
        done.write_text(f"{count} images from {remote.url}\n")
        if remove_archives:
            archive.unlink()
    print(f"{name}: {folder}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch data sets into the data folder")
    get.add_argument("names", nargs="+", choices=sorted(DATASETS), metavar="NAME", help=", ".join(DATASETS))
    get.add_argument("--data-dir", type=Path, default=None, help="default: $RNIC_DATA_DIR, else ./data")
    get.add_argument("--remove-archives", action="store_true", help="delete each archive once extracted")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            download(name, args.data_dir, args.remove_archives)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
