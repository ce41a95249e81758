"""The paper's analyses as tools for any model: norm input-output maps (Figs. 2 and 4) and alpha
against 1/std of the input over training (Fig. 8). Scripts: ``scripts/analysis/``; docs/analysis.md."""

from dyt.analysis.capture import NormCapture, capture_norms, default_layers, norm_layers
from dyt.analysis.input_std import InputStdProbe, input_std

__all__ = ["InputStdProbe", "NormCapture", "capture_norms", "default_layers", "input_std", "norm_layers"]
