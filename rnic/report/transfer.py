"""Transfer matrices: every saved adversarial set (attack.py with attack_run.save_images=true) coded by every
source run's codec, on real bitstreams. Rows: the codec the images were attacked on; columns: the codec
that codes them; the diagonal is the white-box case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from rnic.config_groups import attack_job_base
from rnic.io import write_csv

TRANSFER_COLUMNS = ("source", "target", "psnr_clean", "psnr_adv", "psnr_drop", "vi", "bpp_adv")


def source_runs(paths: list[Path]) -> list[Path]:
    """attack.py run folders below `paths` that kept their adversarial images."""
    runs = sorted({p.parent.parent for root in paths for p in Path(root).rglob("adversarial/*.png")})
    for run in runs:
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run / 'config.yaml'}: the transfer source has no config")
    if not runs:
        folders = ", ".join(map(str, paths))
        raise FileNotFoundError(
            f"no adversarial images under {folders}: run attack.py with attack_run.save_images=true"
        )
    return runs


def run_name(run: Path) -> str:
    config = OmegaConf.load(run / "config.yaml")
    codec = config.model.codec
    name = codec.get("arch") or codec.get("format") or run.name
    weights = config.model.get("weights")
    return f"{name} q{config.model.quality}" + (f" {Path(weights).parent.parent.name}" if weights else "")


def transfer_matrix(paths: list[Path], out: Path) -> list[dict]:
    """Code every source's adversarial images with every source run's codec; one row per pair."""
    from rnic.evaluation import evaluate_robustness  # torch and the codecs only when coding

    runs = source_runs(paths)
    names = [run_name(run) for run in runs]
    rows = []
    for i, source in enumerate(runs):
        source_cfg = OmegaConf.load(source / "config.yaml")
        for j, target in enumerate(runs):
            cfg = OmegaConf.merge(attack_job_base(), OmegaConf.load(target / "config.yaml"))
            # The source's images, split and crops, coded by the target's codec and weights.
            cfg.data, cfg.split, cfg.max_images = source_cfg.data, source_cfg.split, source_cfg.max_images
            cfg.attack = source_cfg.attack
            cfg.attack_run.load_from, cfg.attack_run.save_images = str(source), False
            cfg.paths.output_dir = str(out / "transfer" / f"{i}_to_{j}")
            (mean,) = evaluate_robustness(cfg)
            drop = None if mean["psnr_adv"] is None else mean["psnr_clean"] - mean["psnr_adv"]
            figures = {key: mean.get(key) for key in ("psnr_clean", "psnr_adv", "vi", "bpp_adv")}
            rows.append({"source": names[i], "target": names[j], **figures, "psnr_drop": drop})
    write_csv(out / "transfer_matrix.csv", rows, TRANSFER_COLUMNS)
    return rows


def matrix_figure(rows: list[dict]) -> Figure:
    """Heatmaps of the attacked PSNR drop and the VI, source codec by target codec."""
    names = list(dict.fromkeys(r["source"] for r in rows))
    figure = Figure(figsize=(5 + 2.2 * len(names), 2.5 + 0.9 * len(names)), layout="constrained")
    for axis, key, title in zip(
        figure.subplots(1, 2), ("psnr_drop", "vi"), ("PSNR drop [dB]", "VI [dB]"), strict=True
    ):
        grid = np.full((len(names), len(names)), np.nan)
        for row in rows:
            if row[key] is not None:
                grid[names.index(row["source"]), names.index(row["target"])] = row[key]
        image = axis.imshow(grid, cmap="magma")
        for (r, c), value in np.ndenumerate(grid):
            axis.text(
                c, r, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", color="cyan"
            )
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.set_yticks(range(len(names)), names, fontsize=8)
        axis.set(xlabel="coded by (target)", ylabel="attacked on (source)", title=f"transfer: {title}")
        figure.colorbar(image, ax=axis, shrink=0.8)
    return figure
