"""Where other tools call our models: DEEPaaS (`deepaas`), CytoProcess (`cytoprocess`). Both go through `files`,
which classifies image files exactly as `plankton predict --format folders FILE...` does."""
