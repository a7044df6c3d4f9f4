"""Fine-tuning on folders of MIDI: corpus cache, training batches, the training loop, checkpoints, distributed runs."""
