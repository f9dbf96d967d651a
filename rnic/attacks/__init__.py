"""White-box attacks on learned image codecs: `x_adv = attack(x)`, independent of Lightning."""

from rnic.attacks.base import Attack, NoAttack, ZeroGradientError, to_8bit
from rnic.attacks.objectives import Objective
from rnic.attacks.pgd import PGD
from rnic.attacks.proxy import quantization_proxy
from rnic.attacks.threshold import ThresholdAttack

__all__ = [
    "PGD",
    "Attack",
    "NoAttack",
    "Objective",
    "ThresholdAttack",
    "ZeroGradientError",
    "quantization_proxy",
    "to_8bit",
]
