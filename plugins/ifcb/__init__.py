"""IFCB readers: raw bins (`.hdr` + `.adc` + `.roi`, reader `ifcb`) and exported ROI PNGs (reader `ifcb-png`).

`bins` holds the pure format parsing; `reader` and `png_reader` turn it into records.
"""
