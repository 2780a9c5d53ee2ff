"""The training engine: recipe config, the loop and its step, evaluation, resume state, distributed, logs."""
