"""Hydra presets for `forge launch` (the schema is forge.config.ForgeConfig)."""
