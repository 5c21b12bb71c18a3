"""SLURM compute backend (submitit). Registered as `slurm` in the `plankton.backends` entry points."""
