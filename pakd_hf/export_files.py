"""What `pakd export` leaves beside a student, by name, and how to read its record.

    folder/onnx/model.onnx, model_int8.onnx, export.json        (format "pakd-onnx/1")
                model.onnx.data, model_int8.onnx.data   (a model over ONNX's 2 GB limit: its weights)
    folder/executorch/model.pte, export.json                    (format "pakd-executorch/1")

The card and the push read these (the card's Deploy section, the files a push uploads); the
exporter that writes them is the pipeline's (`pakd_hf.pipeline.deploy`), which needs the task
adapters. Keeping the names and the reader here lets the library read an export without
importing the pipeline. Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ONNX_DIR", "FP32_FILE", "INT8_FILE", "INFO_FILE", "FORMAT", "EXECUTORCH_DIR", "PTE_FILE",
           "EXECUTORCH_FORMAT", "read_info", "read_export_info", "data_file", "onnx_bytes"]

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
INFO_FILE = "export.json"
FORMAT = "pakd-onnx/1"
EXECUTORCH_DIR = "executorch"
PTE_FILE = "model.pte"
EXECUTORCH_FORMAT = "pakd-executorch/1"


def data_file(model: str | os.PathLike) -> Path:
    """Where an ONNX model's external weights live (one file beside it, named as ONNX Runtime's
    quantizer names them): a protobuf holds at most 2 GB, so larger models keep them apart."""
    model = Path(model)
    return model.with_name(model.name + ".data")


def onnx_bytes(model: str | os.PathLike) -> int:
    """An ONNX model's bytes on disk, its external weights included."""
    data = data_file(model)
    return Path(model).stat().st_size + (data.stat().st_size if data.is_file() else 0)


def read_info(folder: str | os.PathLike, fmt: str) -> dict[str, Any] | None:
    """The export.json in ``folder`` when it is a record of format ``fmt``, else None."""
    try:
        info = json.loads((Path(folder) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == fmt else None


def read_export_info(onnx_dir: str | os.PathLike) -> dict[str, Any] | None:
    """export.json of an ONNX folder `pakd export` wrote, or None."""
    return read_info(onnx_dir, FORMAT)
