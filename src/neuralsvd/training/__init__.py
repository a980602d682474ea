"""Training: :func:`fit` and its parts (state, read-out, result, calibration, revival, checkpoints, interrupts, resources, data parallelism, evaluation)."""
