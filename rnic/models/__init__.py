"""Codecs written in rnic (registered in rnic.codec_families.FAMILIES)."""
