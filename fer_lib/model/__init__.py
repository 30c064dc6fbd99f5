"""Model: the network, preprocessing, inference with test-time views, calibration."""
