"""Generation: drum parts from a checkpoint to MIDI, NPZ and pictures (`python -m train.generate`)."""
