"""Stage 6, publish: what is made of predictions and runs: `plankton evaluate`, `plankton summarize`, `plankton report`."""
