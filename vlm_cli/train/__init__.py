"""Training: datasets over cached features, the owned data order, the loop, checkpoints."""
