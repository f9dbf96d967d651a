"""report.py --check: a run's card against its files (weights, results) and its results' means against
their per-image records."""

from __future__ import annotations

import math
from pathlib import Path

from rnic.evaluation.card import CARD_FILE, RESULT_FILES, portable, read_json, recorded_file
from rnic.io import file_sha256


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_card(folder: Path) -> list[str]:
    """Problems found between a run folder and its card (empty: the card describes the folder)."""
    folder = Path(folder)
    path = folder / CARD_FILE
    if not path.is_file():
        return [f"{path}: no model card"]
    card = read_json(path)
    if card is None:
        return [f"{path}: not valid JSON (truncated or edited?)"]
    problems = []
    weights = card.get("weights") or {}
    if weights.get("file"):
        file = recorded_file(weights["file"], folder)
        if not file.is_file():
            problems.append(f"{file}: the weights file of {path} is missing")
        elif file_sha256(file) != weights.get("sha256"):
            problems.append(f"{file}: its SHA-256 is not the one {path} records (the weights changed)")
    name, key = RESULT_FILES[card["kind"]]
    results_path = folder / name
    if not results_path.is_file():
        return [*problems, f"{results_path}: missing, {path} describes it"]
    results = read_json(results_path)
    if results is None:
        return [*problems, f"{results_path}: not valid JSON (truncated or edited?)"]
    means = results[key] if key else {k: v for k, v in results.items() if k != "start"}
    for field, value in card["means"].items():  # paths among them as the card records them
        if not _same(portable(means.get(field), folder), value):
            problems.append(f"{results_path}: {field}={means.get(field)!r}, {path} says {value!r}")
    if card["kind"] == "attack":
        problems += check_attack_results(results, results_path, card, path)
    return problems


def check_attack_results(results: dict, results_path: Path, card: dict, card_path: Path) -> list[str]:
    """An attack run's per-image records against its means and its card, and whether it finished."""
    from rnic.evaluation.records import mean_of  # torch: report.py without --check never imports it

    problems = []
    images = results.get("images", [])
    if len(images) != card["data"]["images"]:
        problems.append(f"{results_path}: {len(images)} image(s), {card_path} says {card['data']['images']}")
    recomputed = mean_of(images)
    for field, value in results["mean"].items():
        if not _same(recomputed.get(field), value):
            problems.append(
                f"{results_path}: mean {field}={value!r}, "
                f"but its per-image records give {recomputed.get(field)!r}"
            )
    if "certified" in results:  # center smoothing's certificate: the means again from the records
        from rnic.defenses.smoothing import certified_means

        recomputed = certified_means(images)
        if recomputed != results["certified"] or card.get("certified") != results["certified"]:
            problems.append(
                f"{results_path}: its certified means differ from its records or from {card_path}"
            )
    if "certified_rate" in results:  # the rate certificate's means again from the records
        from rnic.rate_certificate import rate_means

        if (
            rate_means(images) != results["certified_rate"]
            or card.get("certified_rate") != results["certified_rate"]
        ):
            problems.append(
                f"{results_path}: its certified rate means differ from its records or {card_path}"
            )
    planned = results.get("images_planned", card["data"].get("images_planned"))
    if results.get("complete") is False or (planned is not None and len(images) < planned):
        problems.append(
            f"{results_path}: unfinished run, {len(images)} of {planned} image(s) done "
            "(rerun the same command into its folder to finish it)"
        )
    return problems
