"""Attacks on learned image codecs: `x_adv = attack(x)`, independent of Lightning."""

from rnic.attacks.apgd import APGD
from rnic.attacks.base import Attack, NoAttack, ZeroGradientError, to_8bit
from rnic.attacks.ensemble import AutoAttack, Ensemble, gradient_proxy, with_objective
from rnic.attacks.objectives import Objective
from rnic.attacks.pgd import PGD, RandomStartFGSM
from rnic.attacks.proxy import quantization_proxy
from rnic.attacks.square import Square
from rnic.attacks.threat import DEFAULT_EPS, THREATS, Threat
from rnic.attacks.threshold import ThresholdAttack

__all__ = [
    "APGD",
    "DEFAULT_EPS",
    "PGD",
    "RandomStartFGSM",
    "THREATS",
    "Attack",
    "AutoAttack",
    "Ensemble",
    "NoAttack",
    "Objective",
    "Square",
    "ThresholdAttack",
    "Threat",
    "ZeroGradientError",
    "gradient_proxy",
    "quantization_proxy",
    "to_8bit",
    "with_objective",
]
