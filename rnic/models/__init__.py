"""Codecs written in rnic (registered in rnic.codecs.RNIC_MODELS)."""
