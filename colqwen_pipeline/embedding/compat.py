"""Import-time workaround for PyPI's torchvision beside a CPU-only torch.

PyPI's torchvision 0.28.0 links CUDA libraries into ``_C.so``; next to the CPU build of
torch 2.13.0 its import fails with ``operator torchvision::nms does not exist``. Transformers'
Qwen2-VL image processor imports ``torchvision.transforms.v2``, so colpali-engine cannot load
without it. Defining the two missing operator schemas before the first import lets torchvision
import; colpali never calls nms. On a CUDA machine the native import works and this is a no-op.
"""

from __future__ import annotations

import importlib
import sys

_library = None  # keep the Library object alive: dropping it unregisters the schemas


def ensure_torchvision() -> None:
    global _library
    if "torchvision" in sys.modules:
        return
    try:
        importlib.import_module("torchvision")
        return
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    importlib.import_module("torchvision")
