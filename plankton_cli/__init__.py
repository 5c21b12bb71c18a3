"""plankton-cli: self-supervised plankton recognition, from instrument files to EcoTaxa and IFCB Dashboard."""

__version__ = "0.1.0"
