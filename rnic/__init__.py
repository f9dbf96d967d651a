"""rnic: robust neural image compression.

Kept light: `import rnic.attacks` (or `rnic.codecs`) does not import Lightning; the
LightningModule is `rnic.module.CodecModule`.
"""

from importlib import metadata

try:
    __version__ = metadata.version("rnic")
except metadata.PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
