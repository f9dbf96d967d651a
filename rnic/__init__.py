"""rnic: robust neural image compression."""

from rnic.codecs import build_codec, load_weights, rd_lambda
from rnic.module import CodecModule

__all__ = ["CodecModule", "build_codec", "load_weights", "rd_lambda"]
