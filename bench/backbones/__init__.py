"""Backbones: the registry of named models with their shapes, and the embedded SmolLM2."""
