"""The training engine: recipe config, data, loop, checkpoints, distributed, logging."""
