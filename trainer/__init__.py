"""Fine-tuning on folders of MIDI: corpus cache, samplers, the training loop, checkpoints, distributed runs."""
