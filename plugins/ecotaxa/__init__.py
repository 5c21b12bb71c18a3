"""EcoTaxa import bundles and exports (zip or folder of `ecotaxa*.tsv` plus images): reader, writer, checker."""
