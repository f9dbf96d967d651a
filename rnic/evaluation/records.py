"""An attack.py run's records: the columns of its per-image records, its key (what decides its figures, so
that a rerun continues only the same run), the means, the ensemble members' table, and the files each
budget's folder holds (results.json, card.json, results.csv)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnic import rd
from rnic.classical import REFERENCES
from rnic.defenses.smoothing import certificate_columns, certified_means
from rnic.evaluation.card import write_card
from rnic.image_sets import image_set
from rnic.io import file_sha256, write_csv, write_json
from rnic.rate_certificate import rate_columns, rate_means

# The figures of every record (rnic.evaluation.pairs.code_pair), and the run's time per image.
IMAGE_COLUMNS = (
    "psnr_in", "linf", "psnr_clean", "psnr_adv", "psnr_adv_in", "msssim_clean", "msssim_adv",
    "bpp_clean", "bpp_adv", "bpp_ratio", "vi", "vi_msssim", "seconds",
)  # fmt: skip
# A rate attack (attack.objective.kind=rate) is a denial of service: the real coding time of the clean and
# the adversarial image, median of rnic.evaluation.pairs.CODING_REPEATS, in seconds per image.
RATE_COLUMNS = ("encode_s_clean", "decode_s_clean", "encode_s_adv", "decode_s_adv")
# Behind a defense: the clean figures without it (and, for a non-adaptive attack, its images coded without
# it, i.e. the same attack on the undefended codec), and the clean cost: PSNR lost, bpp added.
UNDEFENDED_COLUMNS = (
    "psnr_clean_undefended", "bpp_clean_undefended", "psnr_cost", "bpp_cost", "psnr_adv_undefended",
    "vi_undefended",
)  # fmt: skip
# The classical references at each image's clean learned rate (rnic.classical.matched_reference).
REFERENCE_COLUMNS = tuple(f"{kind}_{name}" for name in REFERENCES for kind in ("psnr", "bpp"))
# Data settings that change how images are loaded, not which images or pixels: left out of a run's key.
LOADING_KEYS = (
    "num_workers",
    "cache_images",
    "check_images",
    "batch_size",
    "val_batch_size",
    "train_repeats",
)
# attack.py settings that change where or how fast a run goes, not its figures.
RUN_ONLY_KEYS = ("save_images",)


def run_key(cfg: DictConfig) -> dict:
    """What decides a run's figures: the resolved model, attack, data and split, the seed, and the
    weights file's hash. A rerun into a folder continues it only if its key is the same."""
    key = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("model", "attack", "data")}
    # The run options (attack_run) are keyed inside the attack's entry, where they were before they had a
    # node of their own: a rerun continues a folder of either version.
    key["attack"].update(OmegaConf.to_container(cfg.attack_run, resolve=True))
    for name in LOADING_KEYS:
        key["data"].pop(name, None)
    for name in RUN_ONLY_KEYS:
        key["attack"].pop(name, None)
    key["attack"].pop("eps", None)  # each budget folder's key adds its own eps
    if cfg.get("defense"):
        key["defense"] = OmegaConf.to_container(cfg.defense, resolve=True)
    else:  # how a defense is attacked changes nothing without one
        key["attack"].pop("adaptive", None)
        key["attack"].pop("eot_samples", None)
    if cfg.model.get("target_bpp") is not None:  # a rate target chooses the quality per image
        key["model"]["quality"] = key["model"]["codec"]["quality"] = None
    key.update(split=cfg.split, seed=cfg.seed)
    if cfg.model.get("weights"):
        key["weights_sha256"] = file_sha256(cfg.model.weights)
    for name in ("pretrained_file", "pretrained_sha256"):  # recorded by codec_from_config
        key["model"].pop(name, None)
    if cfg.model.get("pretrained_sha256"):
        key["weights_sha256"] = cfg.model.pretrained_sha256
    return key


def flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for k, v in tree.items():
        flat.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat


def check_key(results_path: Path, key: dict) -> list[dict]:
    """The records already in `results_path`, if it belongs to a run with the same key."""
    if not results_path.is_file():
        return []
    previous = json.loads(results_path.read_text())
    old, new = flatten(previous.get("key") or {}), flatten(key)
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    differ.sort(key=lambda k: not k.endswith(("arch", "_target_", "weights_sha256")))  # telling ones first
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ValueError(
            f"{results_path} holds results of another run ({shown}{more}): "
            "use another hydra.run.dir, or delete that folder"
        )
    return previous["images"]


def mean_of(records: list[dict]) -> dict:
    means = {}
    optional = (*UNDEFENDED_COLUMNS, *RATE_COLUMNS, *REFERENCE_COLUMNS, "psnr_adv_vs_clean")
    present = [c for c in optional if any(c in r for r in records)]
    for column in (*IMAGE_COLUMNS, *present):
        means[column] = rd.mean_or_none(r.get(column) for r in records)
    means["images"] = len(records)
    return means


SPREAD_COLUMNS = ("psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "vi", "msssim_adv")


def spread_of(records: list[dict]) -> dict:
    """Median, std and bootstrap 95% interval over the images of the main figures (rd.spread)."""
    return {c: rd.spread(r.get(c) for r in records) for c in SPREAD_COLUMNS if any(c in r for r in records)}


def member_table(records: list[dict]) -> dict[str, dict]:
    """Per ensemble member: images it won, its mean decoded PSNR and VI over the images it ran on,
    and the images where it was skipped (it could not run on this codec)."""
    table: dict[str, dict] = {}
    for record in records:
        for name, figures in (record.get("members") or {}).items():
            row = table.setdefault(name, {"wins": 0, "psnr_adv": [], "vi": [], "skipped": 0})
            if figures.get("psnr_adv") is not None:
                row["psnr_adv"].append(figures["psnr_adv"])
            if figures.get("vi") is not None:
                row["vi"].append(figures["vi"])
            row["skipped"] += bool(figures.get("skipped"))
            row["wins"] += record.get("winner") == name
    return {
        name: {
            "wins": row["wins"],
            "psnr_adv": rd.mean_or_none(row["psnr_adv"]),
            "vi": rd.mean_or_none(row["vi"]),
            "skipped": row["skipped"],
        }
        for name, row in table.items()
    }


def budget_status(records: list[dict], names: list[str]) -> dict:
    """How far a budget folder's run got: a killed run's record says it is unfinished."""
    done = sum(r["image"] in names for r in records)
    return {"images_planned": len(names), "complete": done == len(names)}


def csv_columns(records: list[dict], mean: dict, defended: bool, certified: bool) -> tuple[str, ...]:
    """results.csv's columns: the image, its figures, and those of the run's kind (defense, rate attack,
    classical references, an ensemble's winner, a certificate)."""
    columns = ("image", *IMAGE_COLUMNS, *(UNDEFENDED_COLUMNS if defended else ()))
    columns = (*columns, *(c for c in (*RATE_COLUMNS, *REFERENCE_COLUMNS) if c in mean))
    columns = (*columns, *(("winner",) if member_table(records) else ()))
    columns = (*columns, *(certificate_columns(records[0]) if certified else ()))
    return (*columns, *(rate_columns(records[0]) if records else ()))


def write_budget(
    folder: Path,
    key: dict,
    attack,
    records: list[dict],
    names: list[str],
    card: dict,
    defense: list[str] | None = None,
    adaptive: bool = True,
    certified: bool = False,
) -> None:
    """A budget folder's files after each batch: results.json (key, records, means, ensemble members,
    certificate), card.json and results.csv. `names`: the images the run plans; `defense`: the defenses'
    names behind which it ran (None: none)."""
    mean = mean_of(records)
    status = budget_status(records, names)
    images = image_set(key.get("data"), key.get("split", "val"), names)
    results = {
        "key": key,
        "attack": repr(attack),
        **status,
        "image_set": images,
        "images": records,
        "mean": mean,
        "spread": spread_of(records),
    }
    if defense is not None:
        results.update(defense=defense, adaptive=adaptive)
    members = member_table(records)
    if members:
        results["members"] = members
    certificate = {"certified": certified_means(records)} if certified else {}
    if any("certified_rate" in r for r in records):  # certify.rate=true (rnic.rate_certificate)
        certificate["certified_rate"] = rate_means(records)
    write_json(folder / "results.json", {**results, **certificate})
    data = {
        **card["data"],
        "images": len(records),
        "images_planned": status["images_planned"],
        "image_set": images,
    }
    write_card(folder, {**card, "attack": repr(attack), "complete": status["complete"],
               "data": data, "means": mean, **certificate})  # fmt: skip
    flat = [{**r, **certificate_columns(r), **rate_columns(r)} for r in records]
    columns = csv_columns(records, mean, defense is not None, certified)
    write_csv(folder / "results.csv", [*flat, {"image": "mean", **mean}], columns)
