"""Training and runs: augmentation, the loop, run folders and cache keys, predictions, benchmarks."""
