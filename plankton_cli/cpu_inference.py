"""How predict runs a model on CPU: threads and the arithmetic of the forward pass.

Paths (``--cpu-path``):

- ``fp32``: the model as trained.
- ``bf16``: bfloat16 autocast; only offered when oneDNN reports native bf16 (AVX512-BF16 or AMX), where the
  matrix products run at twice the fp32 rate. Softmax and the probabilities stay fp32.
- ``int8``: dynamic int8 quantisation of every ``nn.Linear`` (weights int8 per tensor, activations quantised
  on the fly): a ViT's time is almost all in its Linear layers (qkv, proj, MLP), and int8 GEMMs through FBGEMM
  with VNNI are the fastest CPU path we measured. Patch embedding (a convolution), LayerNorms and the softmax
  stay fp32.
- ``auto``: ``int8``, the path ``bench/predict_cpu.py`` measured fastest end to end on a 2-core AVX512 machine
  for both the ViT-Ti student and ViT-S (the README's table), with top-1 agreement with fp32 checked on UVP6
  (``tests/test_cpu_inference.py``).

Not measured yet, so not offered here: ``torch.compile`` on CPU (``--compile`` stays, for GPU runs), ONNX Runtime
and OpenVINO (not installed).
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

CPU_PATHS = ("auto", "fp32", "bf16", "int8")
AUTO_PATH = "int8"


def bf16_supported() -> bool:
    """True when this CPU runs bf16 matrix products natively (oneDNN's own check)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def set_threads(threads: int | None) -> None:
    """Intra-op threads of this process (None: torch's default, one per core)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def prepare(model: nn.Module, path: str) -> tuple[nn.Module, AbstractContextManager, str]:
    """``(model, autocast context, path taken)`` for running ``model`` on CPU by ``path`` (see the module doc)."""
    if path not in CPU_PATHS:
        raise ValueError(f"unknown CPU path {path!r}; choose from {', '.join(CPU_PATHS)}")
    if path == "auto":
        path = AUTO_PATH
    if path == "bf16":
        if not bf16_supported():
            raise ValueError("this CPU has no native bf16 (AVX512-BF16 or AMX): use --cpu-path int8 or fp32")
        return model, torch.autocast("cpu", dtype=torch.bfloat16), path
    if path == "int8":
        with warnings.catch_warnings():  # torch.ao's eager quantisation warns that torchao will replace it
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        return quantized, nullcontext(), path
    return model, nullcontext(), path
