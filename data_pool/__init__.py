"""The data pool: Redis store for tasks, samples and rewards, and the windowed-FIFO scheduler."""
