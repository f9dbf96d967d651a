"""Ship a robust finetuning of a shipped CPU codec, with its card: the weights its run attacked at the end
(`robust_eval`), and the clean and attacked figures of that run beside those of its equal-compute clean
control, so that `model.pretrained=true model.robust=<method>` loads the very weights the figures describe.

    python benchmarks/ship_robust.py RUN --control CONTROL_RUN

RUN and CONTROL_RUN: train.py run folders (e.g. `experiment=cpu_tour` with `method=fast` and with
`method=none`), same base, same codec passes, each with its `robust_eval/<threat>/results.json`.
First codes the val photos with those weights and refuses unless the bitstreams are those the run's
evaluation measured; then writes rnic/weights/<arch>-mse-q<quality>-<method>.pth and its card beside it.

    python benchmarks/ship_robust.py ATTACK_RUN --control CONTROL_RUN --card CARD

adds one evaluation to the card of weights shipped already: ATTACK_RUN an attack.py folder that attacked
them (`model.pretrained=true model.robust=<method>`), CONTROL_RUN a run that trains as the card's control
command does (its robust_eval settings aside) and whose robust_eval ran the same attack on the same photos.
That run's own clean val figures are recorded beside its figures: it need not be the control run whose
figures the card holds already.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchvision.transforms import v2

from rnic import rd
from rnic.codecs import (
    build_codec,
    load_weights,
    read_codec_state,
    shipped_architecture,
    shipped_card,
    shipped_path,
    shipped_weights,
)
from rnic.coding import compress_decompress
from rnic.config import CONF, attack_spec
from rnic.data import SampleImages, read_image
from rnic.evaluation.card import portable, versions
from rnic.io import file_sha256, write_json, write_state

FIGURES = (
    "psnr_clean",
    "bpp_clean",
    "psnr_adv",
    "bpp_adv",
    "vi",
    "psnr_jpeg",
    "bpp_jpeg",
    "psnr_webp",
    "bpp_webp",
)


def evaluation(results_file: Path) -> dict:
    """The attack that an attack.py folder's results.json ran, on which weights and photos, and its per-image
    figures and means."""
    results = json.loads(results_file.read_text())
    if not results.get("complete"):
        raise SystemExit(f"error: {results_file} is an unfinished evaluation")
    per_image = {k: [image[k] for image in results["images"]] for k in FIGURES}
    return {
        "attack": {k: v for k, v in results["key"]["attack"].items() if not k.startswith("_")},
        "eps": results["key"]["eps"],
        "split": results["key"]["split"],
        "weights": results["key"]["model"]["weights"],
        "images": [image["image"] for image in results["images"]],
        "per_image": per_image,
        "mean": {k: rd.mean_or_none(v) for k, v in per_image.items()},  # VI: None where none moved
        "spread": {k: rd.spread(v) for k, v in per_image.items()},  # over the images
    }


def evaluations(run: Path) -> dict[str, dict]:
    """Per threat: the attack that measured the run's final weights, and its per-image figures and means."""
    found = {f.parent.name: evaluation(f) for f in sorted((run / "robust_eval").glob("*/results.json"))}
    if not found:
        raise SystemExit(f"error: {run} has no robust_eval/<threat>/results.json")
    return found


def trained_against(attack) -> dict:
    """The training adversary's class, budget and settings: its objective decides what the codec learns."""
    spec, budgets = attack_spec(attack)
    return {"attack": spec.pop("_target_"), "eps": budgets[0] if len(budgets) == 1 else budgets,
            **{k: v for k, v in spec.items() if k[0] != "_"}}  # fmt: skip


def check_control(run: Path, control: Path, measured: dict, control_measured: dict) -> None:
    """Equal compute: the same budget of passes (a run stops at the first step that reaches it, so the
    counts may differ by less than one step's passes) and the same threats evaluated."""
    budget = OmegaConf.load(run / "config.yaml").module.max_passes
    threats, control_threats = set(measured), set(control_measured)
    if budget is None or OmegaConf.load(control / "config.yaml").module.max_passes != budget:
        raise SystemExit(f"error: {control} is not an equal-compute control of {run} (module.max_passes)")
    if threats != control_threats:
        raise SystemExit(
            f"error: {control} evaluated {sorted(control_threats)}, {run} {sorted(threats)}: the control "
            "needs the same threats (an unfinished robust_eval has no results.json yet)"
        )


def card(run: Path, control: Path, target: Path, measured: dict, control_measured: dict) -> dict:
    """The robust weights' card; `measured` and `control_measured`: both runs' `evaluations`."""
    config = OmegaConf.load(run / "config.yaml")
    final = json.loads((run / "final_metrics.json").read_text())
    control_final = json.loads((control / "final_metrics.json").read_text())
    arch = config.model.codec.arch
    first = next(iter(measured.values()))
    return {
        "file": target.name,
        "sha256": file_sha256(target),
        **shipped_architecture(arch),
        "quality": int(config.model.quality),
        "lmbda": final["lmbda"],
        "metric": "mse",
        "method": final["method"],
        "method_config": {
            k: v for k, v in OmegaConf.to_container(config.method, resolve=True).items() if k[0] != "_"
        },
        "trained_against": trained_against(config.attack),
        "started_from": shipped_weights(arch, "mse", int(config.model.quality)).name,
        "data": "data=sample: 12 train photos (random 128x128 crops, batch 8); never the 4 val photos",
        "data_licences": SampleImages.licences(),
        # The libraries that coded the val photos to the bitstreams this card records.
        "verified_with": versions(),
        "passes": final["passes"],
        "optimizer_steps": final["step"],
        "learning_rate": config.module.optimizer.lr,
        "train_seconds": final["train_seconds"],
        "command": train_command(run),
        "from_checkpoint": {"file": first["weights"], "sha256": file_sha256(first["weights"])},
        "val_photos": first["images"],
        "evaluations": measured,
        "control": {
            "command": train_command(control),
            "passes": control_final["passes"],
            "optimizer_steps": control_final["step"],
            "evaluations": {t: {"eps": e["eps"], "mean": e["mean"]} for t, e in control_measured.items()},
        },
        "gain_psnr_adv": {
            t: paired_gain(measured[t], control_measured[t]) for t in measured if t in control_measured
        },
    }


def train_command(run: Path) -> str:
    return "python train.py " + " ".join(OmegaConf.load(run / ".hydra" / "overrides.yaml"))


def what_trains(command: str) -> dict:
    """The config a train.py command composes, without what only evaluates the result (robust_eval): two
    commands that differ only there train the same."""
    overrides = command.removeprefix("python train.py").split()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=overrides))
    return {k: v for k, v in cfg.items() if k != "robust_eval"}


def add_evaluation(card_path: Path, attack_run: Path, control: Path) -> tuple[dict, str]:
    """The shipped card at `card_path` with the evaluation of its weights in `attack_run` (an attack.py
    folder) and the same attack on the same photos in `control`'s robust_eval (a run that trains as the
    card's control command does), with the paired gain; and its name (the control's robust_eval folder, e.g.
    mse_test). Refuses anything else: other weights, another training, an attack the card's evaluations did
    not run."""
    robust_card = json.loads(card_path.read_text())
    added = evaluation(attack_run / "results.json")
    key = json.loads((attack_run / "results.json").read_text())["key"]
    if key["weights_sha256"] != robust_card["sha256"]:
        raise SystemExit(f"error: {attack_run} attacked other weights than {robust_card['file']}")
    if what_trains(train_command(control)) != what_trains(robust_card["control"]["command"]):
        raise SystemExit(
            f"error: {control} ran `{train_command(control)}`: it trains otherwise than the card's control, "
            f"`{robust_card['control']['command']}`"
        )
    if not any(
        e["attack"] == added["attack"] and e["eps"] == added["eps"]
        for e in robust_card["evaluations"].values()
    ):
        raise SystemExit(
            f"error: {attack_run}'s attack is none of the card's evaluations' (threat, eps, settings)"
        )
    same = ("attack", "eps", "split", "images")
    control_measured = evaluations(control)
    matches = [n for n, e in control_measured.items() if all(e[k] == added[k] for k in same)]
    if len(matches) != 1:
        raise SystemExit(
            f"error: {control}/robust_eval has {len(matches)} evaluation(s) of the attack of {attack_run} on "
            "its photos, not 1"
        )
    (name,) = matches
    if name in robust_card["evaluations"]:
        raise SystemExit(f"error: the card holds a {name} evaluation already")
    check_bitstreams(
        str(card_path.parent / robust_card["file"]),
        key["model"]["codec"]["arch"],
        robust_card["quality"],
        {name: added},
    )
    control_added = control_measured[name]
    final = json.loads((control / "final_metrics.json").read_text())
    robust_card["evaluations"][name] = {**added, "weights": robust_card["file"]}
    robust_card["control"]["evaluations"][name] = {
        "eps": control_added["eps"],
        "mean": control_added["mean"],
        # which run of the control command: its own clean val figures tell it from the card's other one
        "run": {"passes": final["passes"], "optimizer_steps": final["step"],
                "val_clean": {"psnr": final["val/clean/psnr_real"], "bpp": final["val/clean/bpp_real"]}},
    }  # fmt: skip
    robust_card["gain_psnr_adv"][name] = paired_gain(added, control_added)
    return robust_card, name


def paired_gain(ours: dict, control: dict) -> dict | None:
    """The attacked PSNR gain over the control image by image (rd.spread: mean, median, interval)."""
    theirs = dict(zip(control["images"], control["per_image"]["psnr_adv"], strict=True))
    mine = dict(zip(ours["images"], ours["per_image"]["psnr_adv"], strict=True))
    return rd.spread(mine[name] - theirs[name] for name in mine if name in theirs)


def check_bitstreams(checkpoint: str, arch: str, quality: int, measured: dict[str, dict]) -> None:
    """The weights code the val (and test) photos to the bitstreams the run's evaluations measured."""
    codec = load_weights(build_codec(arch, quality=quality), checkpoint).eval()
    codec.update(force=True)
    splits = SampleImages().splits()
    paths = {p.stem: p for p in splits["val"] + splits["test"]}  # robust_eval/<threat>_test: test
    coded: dict[tuple[str, ...], list[float]] = {}  # each split's photos coded once, whatever the threats
    for threat, evaluation in measured.items():
        names = tuple(evaluation["images"])
        if names not in coded:
            x = torch.stack([v2.CenterCrop(256)(read_image(paths[name])) for name in names])
            coded[names] = compress_decompress(codec, x)[1].tolist()
        if coded[names] != evaluation["per_image"]["bpp_clean"]:
            raise SystemExit(f"error: {checkpoint} codes other bitstreams than robust_eval/{threat} measured")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="train.py run folder (with --card: an attack.py folder)")
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--card", type=Path, help="a shipped card to add RUN's evaluation to")
    args = parser.parse_args()
    if args.card:
        robust_card, name = add_evaluation(args.card, args.run, args.control)
        write_json(args.card, robust_card)
        print_card(robust_card, [name])
        print(f"added {name} to {args.card}")
        return
    config = OmegaConf.load(args.run / "config.yaml")
    arch, quality = config.model.codec.arch, int(config.model.quality)
    method = json.loads((args.run / "final_metrics.json").read_text())["method"]
    target = shipped_path(arch, "mse", quality, method)
    measured, control_measured = evaluations(args.run), evaluations(args.control)
    check_control(args.run, args.control, measured, control_measured)  # before any file is written
    checkpoints = {e["weights"] for e in measured.values()}
    if len(checkpoints) != 1:
        raise SystemExit(f"error: {args.run}'s evaluations attacked different weights: {sorted(checkpoints)}")
    (checkpoint,) = checkpoints
    check_bitstreams(checkpoint, arch, quality, measured)
    state, _ = read_codec_state(checkpoint)
    write_state(target, state)
    robust_card = card(args.run, args.control, target, measured, control_measured)
    # no folder of this machine
    write_json(shipped_card(arch, "mse", quality, method), portable(robust_card, args.run))
    print_card(robust_card, list(robust_card["evaluations"]))
    print(f"shipped {checkpoint} as {target} with its card")


def print_card(robust_card: dict, names: list[str]) -> None:
    """The card's figures of the evaluations `names`, beside the control's."""
    for name in names:
        e = robust_card["evaluations"][name]["mean"]
        c = robust_card["control"]["evaluations"][name]["mean"]
        vi = "n/a (no reconstruction moved)" if e["vi"] is None else f"{e['vi']:.2f}"
        print(
            f"{name} eps {robust_card['evaluations'][name]['eps']:.4g}: clean {e['psnr_clean']:.2f} dB, "
            f"{e['bpp_clean']:.3f} bpp (control {c['psnr_clean']:.2f} at {c['bpp_clean']:.3f}); attacked "
            f"{e['psnr_adv']:.2f} dB (control {c['psnr_adv']:.2f}: {e['psnr_adv'] - c['psnr_adv']:+.2f}); "
            f"VI {vi}\n"
            f"  attacked PSNR gain over the images: {rd.spread_text(robust_card['gain_psnr_adv'].get(name))}"
        )


if __name__ == "__main__":
    main()
