"""rnic: robust neural image compression.

Kept light: `import rnic.attacks` (or `rnic.codecs`) does not import Lightning; the
LightningModule is `rnic.module.CodecModule`.
"""
