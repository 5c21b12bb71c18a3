"""Stage 5, infer: `plankton predict`, from a model file and images to predictions handed to the writers."""
