"""The store's instrument vocabulary: EcoTaxa's `acq_instrument` names, which every reader maps its instrument to."""

from __future__ import annotations

INSTRUMENTS = (
    "CytoSense", "IFCB", "CPICS", "UVP5HD", "UVP5SD", "UVP5Z", "UVP6", "VPR", "LISST-Holo", "ZooCam", "Loki",
    "FlowCam", "FlowCam macro", "FastCam", "Zooscan", "PlanktoScope", "Plankton Imager", "ISIIS", "AMNIS",
    "eHFCM", "Other camera", "Other microscope", "Other scanner", "Other flowcytometer",
)
"""EcoTaxa's reference `acq_instrument` values (`ecotaxa_back: py/data/Instruments.py`)."""

_ALIASES = {
    "cs": "CytoSense",  # DAPlankton folder names
    "fc": "FlowCam",
}
_BY_LOWER = {name.lower(): name for name in INSTRUMENTS} | _ALIASES


def canonical_instrument(name: str) -> str | None:
    """EcoTaxa's spelling of an instrument name or alias (`ifcb` → `IFCB`, `CS` → `CytoSense`), else None."""
    return _BY_LOWER.get(name.strip().lower())
