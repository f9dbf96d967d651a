"""rnic's config folder and its groups, without torch: the commands import this before anything heavy
loads (a refused command answers in seconds, and third-party warnings are silenced first)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

# rnic's own configs, shipped inside the package: the commands' config_path, the search path outside a job.
CONF = Path(__file__).resolve().parent / "conf"


def config_group(group: str) -> dict[str, DictConfig]:
    """The options of config group `group` (each `<group>/<name>.yaml`: name -> its config), read from
    Hydra's search path as the running job composed it (`hydra.searchpath` included), or from rnic/conf/
    outside a Hydra job. Where two directories hold the same name, the first one wins, as in Hydra."""
    sources = HydraConfig.get().runtime.config_sources if HydraConfig.initialized() else []
    roots = [Path(s.path) for s in sources if s.schema == "file"]
    roots += [resources.files(s.path.replace("/", ".")) for s in sources if s.schema == "pkg"]
    options: dict[str, DictConfig] = {}
    for root in roots or [CONF]:
        folder = root / group
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            name = entry.name.removesuffix(".yaml")
            if entry.name.endswith(".yaml") and name not in options:
                options[name] = OmegaConf.create(entry.read_text())
    return options


def attack_job_base() -> DictConfig:
    """attack.yaml's own settings (its config groups left out): the base of an attack.py job config built
    in code (train.py's robust_eval, report.py's transfer matrix), so that it holds every key attack.py's
    job reads, with attack.yaml's defaults."""
    base = OmegaConf.load(CONF / "attack.yaml")
    del base["defaults"]
    return base


def choosable_groups() -> str:
    """`--help`'s list of config groups: those in the composed config's defaults (group=option works), each
    with its options; groups only read by other configs (rnic/conf/shared/) are not listed."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    groups = sorted(g for g in choices if g != "hydra" and not g.startswith("hydra/"))
    return "\n".join(f"{group}: {', '.join(config_group(group))}" for group in groups)


def if_then_else(condition, then, otherwise):
    """`${rnic_if:CONDITION,THEN,ELSE}`: a config value chosen by a boolean setting (e.g. the codec that
    `model.pretrained=true` loads)."""
    if not isinstance(condition, bool):
        raise ValueError(f"rnic_if needs a boolean condition, got {condition!r}")
    return then if condition else otherwise


OmegaConf.register_new_resolver("rnic_choosable_groups", choosable_groups, replace=True)
OmegaConf.register_new_resolver("rnic_if", if_then_else, replace=True)
