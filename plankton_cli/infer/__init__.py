"""Stage 5, infer: `plankton predict`, from a model file and images to predictions handed to the writers; and the
same classification for other tools' calls (`image_files`: files as `plankton predict` reads them; `cytoprocess`:
CytoProcess's predict hook)."""
