"""Codecs written in rnic (not in CompressAI's zoo), with their authors' checkpoint layouts."""
