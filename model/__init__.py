"""Forward-Forward layers, state-space layers, the models built from them, training and checkpoints."""
