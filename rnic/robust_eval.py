"""train.py's `robust_eval`: attack.py's evaluation of the trained (and the starting) weights after
training, on real bitstreams, and the table that puts them side by side."""

from __future__ import annotations

from itertools import product
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from rnic.classical import REFERENCES, reference_line
from rnic.config_groups import attack_job_base


@rank_zero_only
def robust_evaluation(cfg: DictConfig, weights: Path) -> dict[str, dict]:
    """attack.py's evaluation of the final weights under each attack of `robust_eval.attacks` on each split
    of `robust_eval.splits` (real bitstreams, into `robust_eval/<name>/` for val, `<name>_<split>/` for the
    others, e.g. linf_test): the mean figures per attack and split. With `robust_eval.start=true` also of
    the starting weights (`start_<name>`, into `robust_eval/start_<name>/`)."""
    from rnic.evaluation import evaluate_robustness

    settings = cfg.robust_eval
    model = OmegaConf.to_container(cfg.model, resolve=True)
    final = {**model, "weights": str(weights), "pretrained": False}
    codecs = {"": final} | ({"start_": model} if settings.get("start") else {})
    splits = settings.get("splits") or [settings.get("split", "val")]  # runs that predate `splits`
    figures = {}
    for split, (name, attack), (prefix, codec) in product(splits, settings.attacks.items(), codecs.items()):
        folder = prefix + (name if split == "val" else f"{name}_{split}")
        # attack.py's config (attack.yaml's settings) with this run's codec, data and seed, and the attack
        # that robust_eval.attacks composed from attack/*.yaml
        job = OmegaConf.merge(
            attack_job_base(),
            {
                "model": codec,
                "data": OmegaConf.to_container(cfg.data, resolve=True),
                "attack": OmegaConf.to_container(attack, resolve=True),
                "paths": {"output_dir": str(Path(cfg.paths.output_dir) / "robust_eval" / folder)},
                "split": split,
                "max_images": settings.max_images,
                "batch_size": settings.batch_size,
                "device": settings.device,
                "coding_device": cfg.module.coding_device,
                "seed": cfg.seed,
            },
        )
        (figures[folder],) = evaluate_robustness(job)
    if settings.get("start"):
        print(robust_table(figures, settings))
    return figures


# The side-by-side table of robust_eval.start: (key, label, format).
ROBUST_TABLE = (
    ("psnr_clean", "PSNR clean [dB]", "{:.2f}"),
    ("psnr_adv", "PSNR attacked [dB]", "{:.2f}"),
    ("bpp_clean", "bpp clean", "{:.3f}"),
    ("bpp_adv", "bpp attacked", "{:.3f}"),
    ("vi", "VI [dB]", "{:.2f}"),
)


def robust_table(figures: dict[str, dict], settings: DictConfig) -> str:
    """The starting and the finetuned codec side by side under each attack of robust_eval, with the
    classical references at the finetuned codec's clean rate."""
    lines = []
    for name, attack in settings.attacks.items():
        start, final = figures[f"start_{name}"], figures[name]
        kind = attack.get("_target_", "").rsplit(".", 1)[-1]
        eps = attack.get("eps")
        budget = f"{eps * 255:.3g}/255" if attack.get("threat") == "linf" and isinstance(eps, float) else eps
        budget = "at its default budget" if eps is None else budget
        what = f"{kind} {attack.get('threat')} {budget}"
        lines.append(f"\nWorst case, {what} ({name}), real bitstreams, means over the val images:")
        lines.append(f"  {'':<20}  {'start':>10}  {'finetuned':>10}  {'change':>8}")
        for key, label, fmt in ROBUST_TABLE:
            a, b = start.get(key), final.get(key)
            change = "n/a" if a is None or b is None else f"{b - a:+.2f}"
            cells = ["n/a" if v is None else fmt.format(v) for v in (a, b)]
            lines.append(f"  {label:<20}  {cells[0]:>10}  {cells[1]:>10}  {change:>8}")
        if final.get("psnr_jpeg") is not None:
            references = {n: {"psnr": final[f"psnr_{n}"], "bpp": final[f"bpp_{n}"]} for n in REFERENCES}
            lines.append("  finetuned, clean: " + reference_line(final["psnr_clean"], references))
    return "\n".join(lines)
