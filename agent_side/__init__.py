"""Agent side: environment workers, environments, reward functions, the black-box agent runner."""
