"""Training GAN generators: networks, losses, data, the loop, evaluation, checkpoints."""
