"""The train engine: advantages, prefix-tree merging, attention backends, losses, DeepSpeed."""
