"""Kept at this path for third-party writer plugins, which import it; the module lives in plankton_cli/core/."""

from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun, Writer, WriterSession

__all__ = ["UNCLASSIFIED", "Prediction", "PredictionRun", "Writer", "WriterSession"]
