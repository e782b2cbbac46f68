"""Phase 1: Forward-Forward image classifiers (Fashion-MNIST) and their backprop baseline."""
