"""Per-object features: morphometrics measured from the image (`plankton features`) and the numeric features
sources carry (EcoTaxa `object_*`, IFCB ADC columns), standardised for the classifier's head.

- ``morphometrics``: segment one image and measure it (scikit-image regionprops)
- ``dataset``: `objects` → the store's `features` dataset, incremental and atomic
- ``inputs``: which features an object has, the selection (`--features auto|none|NAME,...`), their robust
  scaling, and the standardised matrix for a list of object ids

Torch-free.
"""
