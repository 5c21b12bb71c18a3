"""Stage 3, prepare: what the stored images become before a model sees them: square padding (`plankton pad`),
morphometric features (`plankton features`), datasets, transforms and normalisation stats (`plankton stats`)."""
