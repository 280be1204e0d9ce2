"""Training the learned codecs: clip cache, pair datasets, objectives, the training loop."""
