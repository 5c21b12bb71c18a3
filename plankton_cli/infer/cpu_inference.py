"""How predict runs a model on CPU: threads and the arithmetic of the forward pass.

Paths (``--cpu-path``):

- ``fp32``: the model as trained.
- ``bf16``: bfloat16 autocast; only offered when oneDNN reports native bf16 (AVX512-BF16 or AMX), where the
  matrix products run at twice the fp32 rate. Softmax and the probabilities stay fp32.
- ``int8``: dynamic int8 quantisation of every ``nn.Linear`` (weights int8 per tensor, activations quantised
  on the fly): a ViT's time is almost all in its Linear layers (qkv, proj, MLP), and int8 GEMMs through FBGEMM
  with VNNI are the fastest CPU path we measured. Patch embedding (a convolution), LayerNorms and the softmax
  stay fp32. On a timm CNN student (``distill --student mobilenetv3_small_100``) only the bottleneck head's two
  Linear layers are quantised (its blocks, squeeze-excitation included, are convolutions): every convolution
  stays fp32, so int8 changes little there.
- ``auto``: for a ViT, ``int8`` where the CPU has VNNI (AVX512-VNNI, AVX-VNNI or AMX) or, when its flags cannot be read,
  reports AVX512: there ``bench/predict_cpu.py`` measured it fastest end to end for both the ViT-Ti student and
  ViT-S (the README's table), with top-1 agreement with fp32 checked on UVP6 (``tests/test_cpu_inference.py``).
  Elsewhere ``fp32``: without VNNI, FBGEMM's int8 products run at fp32's speed (0.96-1.04 × on an AVX2 EPYC,
  ``bench/cpu_paths.py``) and only cost agreement. A CNN always runs ``fp32``: int8 would reach only its head.

Measured and not offered (``bench/cpu_paths.py``, forward pass, top-1 agreement on UVP6; the README's table): none
beats ``int8`` by the 15 % that would pay for a second runtime and an export step in the nightly job.

- ``torch.compile`` (mode default): 0.89-0.98 × fp32 for ViT-Ti/16 112 px and ViT-S/16 224 px on 2 threads, plus
  10-40 s of compiling per process. ``--compile`` stays, for GPU runs.
- ONNX Runtime fp32 (``torch.onnx.export``, 100 % agreement): ViT-S/16 0.95 × int8; ViT-Ti/16 1.06-1.15 × int8
  on 2 threads in the less busy runs and 1.09 × on 1 thread, forward only: end to end (not measured) decoding and
  resizing on the same cores can only shrink that. It wins clearly only on 2 threads of a busy machine (1.2-1.4 ×
  int8), where torch's many small ops wait for a thread another process holds: not a station running its night
  alone.
- ONNX Runtime int8 (``quantize_dynamic``): no faster than its fp32, and its agreement with fp32 was 96.1 % on a
  trained ViT-Ti/16 112 px (torch's int8: 99.8 %) and 89.4 % on a trained 48 px ViT (torch's int8: 99.1 %).
- OpenVINO: not installed.

On an AVX2 CPU without VNNI (the shared development VM) int8 runs at fp32's speed (0.96-1.02 ×): it pays on
AVX512 CPUs, where the README's end-to-end table was measured. Its agreement with fp32 was 99.8 % on a trained
ViT-Ti/16 112 px, 99.1 % on a trained 48 px ViT and 98.1 % on the same shape with feature inputs
(``bench/cpu_paths.py``): near the 99 % line, so a station's own model is worth checking against ``--cpu-path fp32``.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

from plankton_cli.train.models.classifier import contains_vit

CPU_PATHS = ("auto", "fp32", "bf16", "int8")
INT8_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # /proc/cpuinfo names of the instructions int8 GEMMs use


def auto_path() -> str:
    """``int8`` where this CPU has int8 dot-product instructions, else ``fp32`` (see the module doc)."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):  # not Linux: torch's own (coarser) reading
        return "int8" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "fp32"
    return "int8" if flags & INT8_FLAGS else "fp32"


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
        path = auto_path() if contains_vit(model) else "fp32"
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
