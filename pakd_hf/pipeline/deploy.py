"""To the device: ONNX export of a saved classifier, int8 quantization, ONNX Runtime.

    export_onnx(folder)                    folder/onnx/model.onnx (+ model_int8.onnx), export.json
    export_executorch(folder)              folder/executorch/model.pte (XNNPACK), export.json
    OrtModel(path)(**inputs).logits        an ONNX model behind a transformers model's call
    compare_onnx(teacher, student, ...)    batch-1 / batch-32 ONNX Runtime latencies side by side

The exporter is torch's own (`torch.onnx.export`), on its TorchScript path (``dynamo=False``)
for every family the project supports (BERT/RoBERTa, ViT, ResNet, wav2vec2, Whisper encoder,
and the non-uniform custom-code students). The dynamo path exports these models too, but its
graphs reach the weights of linear layers through Transpose nodes, which ONNX Runtime's
dynamic quantization does not quantize (the "int8" model came out no smaller), and it takes
about ten times longer; the TorchScript path gives MatMul initializers that quantize. Axes:
the batch is dynamic everywhere; so is the sequence of a text model (``input_ids``,
``attention_mask``, ``token_type_ids``) and the samples of a wav2vec2 clip; images keep the
processor's size and Whisper its 30 s window of features (the encoder's positions are fixed).

Every export is checked: the same inputs (a batch size and a length other than those traced)
through PyTorch and ONNX Runtime, the largest absolute difference of the logits reported and
held to ``tolerance``. int8 is ONNX Runtime's quantization, dynamic (weights int8 per tensor,
activations quantized at run time: right for transformers' linear layers) or static (weights
per channel, activation ranges calibrated on training examples, QDQ format: what convolutions
need, since ONNX Runtime's dynamic int8 convolution is slower than fp32); its agreement with
fp32 is reported here and its accuracy is measured by the caller on real data (`pakd compress`
does, on validation and test).

Outputs are written in a temporary folder beside the target and renamed into place; an
existing target is replaced only when an earlier `pakd export` made it (its export.json).
ONNX and ONNX Runtime are the ``export`` extra: ``pip install 'pakd-hf[export]'``. They, and
ExecuTorch, are imported inside the functions that use them, so this module (which `pakd
compress` imports) loads without them and :func:`require_onnx` can say what to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DeployError
from ..export_files import (EXECUTORCH_DIR, EXECUTORCH_FORMAT, FORMAT, FP32_FILE, INFO_FILE, INT8_FILE, ONNX_DIR, PTE_FILE,
                            data_file, onnx_bytes,
                            read_export_info, read_info)

__all__ = ["DeployError", "export_onnx", "export_executorch", "OrtModel", "compare_onnx", "measure_onnx", "median_onnx", "ONNX_DIR", "FP32_FILE", "INT8_FILE",
           "TOLERANCE", "DEFAULT_OPSET", "read_export_info"]

DEFAULT_OPSET = 17
# fp32 ONNX Runtime against PyTorch eager: the shipped students differ by ~1e-6 or less (the
# same arithmetic in another order); a real export fault (a wrong axis, a traced constant)
# differs by whole units.
TOLERANCE = 1e-4
# Axes beyond the batch that stay dynamic, by input name (see the module docs).
_LENGTH_AXES = {"input_ids": "sequence", "attention_mask": "sequence", "token_type_ids": "sequence",
                "input_values": "samples"}


def require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DeployError(f"ONNX export needs {' and '.join(missing)}: pip install 'pakd-hf[export]'")


# ---- loading and example inputs -------------------------------------------------------------
def _load(folder: Path):
    """(model, preprocessor, task adapter, encoding settings: the data block's defaults) of a
    saved classifier folder."""
    from ..export import load_compact
    from .tasks import ADAPTERS, default_data, folder_task

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
    task = folder_task(folder)  # FileNotFoundError naming what to save beside the model
    if task == "text-generation":
        raise DeployError(f"{folder} is a causal LM: the ONNX export covers text, image and audio classifiers "
                          "(a decoder needs a KV-cache-aware export, which pakd export does not do yet)")
    adapter = ADAPTERS[task]
    try:
        config = json.loads((folder / "config.json").read_text())
        if str(config.get("model_type", "")).startswith("pakd_"):  # a non-uniform student: its own classes
            model = load_compact(folder)
        else:
            model, loading = adapter.model_class().from_pretrained(folder, output_loading_info=True)
            if loading.get("missing_keys"):  # e.g. a base model: its head would be random, and exported as such
                raise DeployError(f"{folder} lacks weights of {type(model).__name__} ({sorted(loading['missing_keys'])[0]}, "
                                  f"... {len(loading['missing_keys'])} in all): export a trained {adapter.task} model")
        preprocessor = adapter.load_preprocessor(folder)
    except DeployError:
        raise
    except Exception as e:  # noqa: BLE001 - no weights, an unknown config, a truncated or mismatched file
        raise DeployError(f"cannot load {folder} as a {adapter.task} model: {' '.join(str(e).split())[:300]}") from None
    return model.eval(), preprocessor, adapter, default_data()


def _input_names(model: nn.Module, encoded: dict[str, torch.Tensor]) -> list[str]:
    """The encoded inputs the model's forward takes, in its signature order (the TorchScript
    exporter names inputs by position)."""

    params = list(inspect.signature(model.forward).parameters)
    names = [p for p in params if p in encoded]
    if not names:
        raise DeployError(f"{type(model).__name__}.forward takes none of the preprocessor's outputs {sorted(encoded)}")
    return names


def _examples(adapter, preprocessor, spec, count: int, longer: bool) -> dict[str, torch.Tensor]:
    """``count`` seeded examples encoded by the folder's own preprocessor; ``longer`` gives
    longer texts and clips than the traced ones, to check the dynamic axes."""
    from .tasks import sample_examples

    examples = sample_examples(adapter.task, preprocessor)
    if adapter.task == "text-classification":
        texts = [examples[i % len(examples)] for i in range(count)]
        if longer:
            texts = [t + " " + examples[(i + 1) % len(examples)] for i, t in enumerate(texts)]
        return adapter.encode_batch(preprocessor, texts, spec)
    batch = [examples[i % len(examples)] for i in range(count)]
    if adapter.task == "audio-classification" and longer:
        spec = dataclasses.replace(spec, max_seconds=1.5 * spec.max_seconds)
    return adapter.encode_batch(preprocessor, batch, spec)


class _Logits(nn.Module):
    """The model with positional tensor inputs and the logits as its one output."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).logits


# ---- ONNX Runtime ----------------------------------------------------------------------------
class OrtModel:
    """An ONNX classifier called like a transformers model: ``model(**inputs).logits``.

    ``inputs`` are what the preprocessor returns (torch tensors or numpy arrays; extra keys
    are ignored, a missing one is an error naming it), so accuracy and latency code written for
    PyTorch models runs it unchanged. One session, CPU, ``threads`` intra-op threads (default:
    torch's), one inter-op thread, all graph optimizations."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise DeployError(f"ONNX Runtime cannot load {path}: {' '.join(str(e).split())[:300]}") from None
        self.path = Path(path)
        self.threads = options.intra_op_num_threads
        self.input_names = [i.name for i in self.session.get_inputs()]

    def eval(self) -> OrtModel:
        return self

    def __call__(self, **inputs) -> SimpleNamespace:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DeployError(f"{self.path} needs the input(s) {missing}; the preprocessor gave {sorted(inputs)}")
        feed = {n: (inputs[n].numpy() if isinstance(inputs[n], torch.Tensor) else np.asarray(inputs[n]))
                for n in self.input_names}
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(None, feed)[0]))


def _max_diff(onnx_model: OrtModel, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[float, np.ndarray]:
    with torch.inference_mode():
        expected = model(**inputs).logits.float().numpy()
    got = onnx_model(**inputs).logits.numpy()
    if got.shape != expected.shape:
        raise DeployError(f"the ONNX model gives logits of shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max()), got


# ---- export ----------------------------------------------------------------------------------
INT8_MODES = ("dynamic", "static")
INT8_METHODS = {
    "dynamic": "onnxruntime.quantization.quantize_dynamic (QInt8 weights per tensor, activations quantized at run time)",
    "static": "onnxruntime.quantization.quantize_static (QDQ; QInt8 weights per channel, QUInt8 activations "
              "with ranges calibrated on training examples)",
}


def int8_mode(int8: bool | str) -> str | None:
    """``int8`` as a recipe or caller gives it (false, true = dynamic, "dynamic", "static") -> the mode or None."""
    if int8 is False or int8 is None:
        return None
    mode = "dynamic" if int8 is True else int8
    if mode not in INT8_MODES:
        raise DeployError(f"int8 must be one of true, false, {', '.join(repr(m) for m in INT8_MODES)}; got {int8!r}")
    return mode


@contextlib.contextmanager
def _quiet_root_logger():
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises a pre-processing pass on every call, through the root logger
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _in_scratch_dir():
    """Run the block in a temporary working directory, then return to the caller's. When
    onnxruntime's symbolic shape inference cannot infer every shape (a transformer's graph), it
    saves its partial model as ``sym_shape_infer_temp.onnx`` in the working directory, with its
    tensors in a uuid-named ``.data`` file (up to the model's size), overwriting a user's file
    of that name: there is no option to send them elsewhere. The working directory is process-
    wide: `pakd compress` runs its export stage alone (after training, in the main thread), and
    every path handed to onnxruntime here is absolute; a program that calls :func:`export_onnx`
    with ``int8="static"`` while other threads use relative paths sees them move for that while."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="pakd-quantize-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(cwd)


def _quantize(src: Path, dst: Path, mode: str, calibration: list[dict[str, np.ndarray]] | None) -> None:
    """Dynamic int8 (weights only; what transformers' linear layers need), or static int8:
    weights per channel and activations with ranges calibrated on ``calibration`` batches, in
    the QDQ format ONNX Runtime fuses into integer kernels (QLinearConv, QLinearMatMul).
    Static is what convolutions need: ONNX Runtime has no fast dynamic int8 convolution
    (ConvInteger), so a dynamically quantized CNN runs slower than fp32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()  # absolute: pre-processing runs in a scratch directory
    external = data_file(src).is_file()  # over 2 GB: the int8 model keeps its weights apart too (dst.data)
    if mode == "dynamic":
        with _quiet_root_logger():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=external)
        return
    if not calibration:
        raise DeployError("static int8 needs calibration examples (training inputs): none were given")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    prepared = dst.with_name(dst.stem + "-prepared.onnx")
    try:
        with _quiet_root_logger(), _in_scratch_dir():
            try:  # shape inference and graph fusions first, as onnxruntime's quantization guide advises
                quant_pre_process(str(src), str(prepared), save_as_external_data=external, all_tensors_to_one_file=True,
                                  external_data_location=data_file(prepared).name)
            except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs; quantize the plain export
                prepared.unlink(missing_ok=True)
                prepared = src
            options = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                           weight_type=QuantType.QInt8, use_external_data_format=external)
            with warnings.catch_warnings():  # numpy's warnings about an infinite range: handled below
                warnings.simplefilter("ignore", RuntimeWarning)
                quantize_static(str(prepared), str(dst), Batches(), **options)
            # A tensor that can hold -inf (a transformer's additive attention mask: the Where / Add
            # before the softmax) calibrates to an infinite range, so its scale is NaN and every
            # row attends alike. Those tensors stay float: the nodes that make or read them are
            # left out and the model quantized again (its MatMuls and Gemms stay int8).
            bad = _unbounded_tensors(dst)
            if bad:
                import onnx

                graph = onnx.load(str(prepared), load_external_data=False).graph
                skip = [n.name for n in graph.node if set(n.input) & bad or set(n.output) & bad]
                with warnings.catch_warnings():  # the same ranges are computed again (and not used)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    quantize_static(str(prepared), str(dst), Batches(), nodes_to_exclude=skip, **options)
                if _unbounded_tensors(dst):
                    raise DeployError(f"static int8 left tensors without a finite range ({sorted(bad)[0]}, ...): "
                                      "use int8: dynamic for this model")
    finally:
        if prepared != src:
            prepared.unlink(missing_ok=True)
            data_file(prepared).unlink(missing_ok=True)


def _one_data_file(model: Path) -> None:
    """A model over 2 GB leaves torch's exporter with its weights in one file per tensor beside
    it; they are gathered into ``model.onnx.data`` (the layout ONNX Runtime's quantizer writes),
    so the folder holds two files a push, a byte count and a copy can name. Below 2 GB: nothing."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(model), load_external_data=False)
    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return
    loose = {entry.value for t in proto.graph.initializer if uses_external_data(t)
             for entry in t.external_data if entry.key == "location"}
    if loose == {data_file(model).name}:
        return
    proto = onnx.load(str(model))  # every tensor, read from its file
    onnx.save_model(proto, str(model), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file(model).name, size_threshold=1024)
    for name in loose - {data_file(model).name}:
        (model.parent / name).unlink(missing_ok=True)


# An activation scale above this spans more than 2.5e8 per step of 255: a range no real
# activation has, only an additive mask filled with the float's lowest value (an eager-attention
# export; SDPA's gives -inf, whose scale is NaN). Either way the real values would all round to
# one step, so those tensors are treated alike.
MAX_ACTIVATION_SCALE = 1e6
_SCALE = re.compile(r"(.+)_scale(?:_convert)?")


def _unbounded_tensors(path: Path) -> set[str]:
    """The activations of a QDQ model whose scale is not finite or absurdly large (their
    calibrated range was infinite, or the float's whole range)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    bad = set()
    for init in model.graph.initializer:
        found = _SCALE.fullmatch(init.name)
        if found and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            scale = numpy_helper.to_array(init).astype(np.float64)
            if not (np.isfinite(scale).all() and np.abs(scale).max(initial=0.0) <= MAX_ACTIVATION_SCALE):
                bad.add(found.group(1))
    return bad


def training_examples(recipe, count: int = 256, train=None) -> list:
    """``count`` raw examples (texts, images, clips) drawn with the data's seed from the training
    split of ``recipe``'s data (``train``, when the caller has it loaded): what static int8
    calibrates on. Never validation or test, which measure the quantized model."""
    from .tasks import adapter_for

    if recipe.data is None:
        raise DeployError("static int8 calibrates on the training split, and the recipe names no data set (data:)")
    if train is None:
        from .compress import load_data

        train = load_data(recipe, False)["train"]
    rows = np.random.default_rng(recipe.data.seed).permutation(len(train))[:count]
    return list(train.select(sorted(int(i) for i in rows))[adapter_for(recipe).column(recipe.data)])


def calibration_batches(adapter, preprocessor, spec, examples: list, names: list[str], batch_size: int = 16,
                        ) -> list[dict[str, np.ndarray]]:
    """Raw training ``examples`` (texts, images, clips) encoded by the folder's own
    preprocessor into the batches static quantization calibrates on."""
    out = []
    for i in range(0, len(examples), batch_size):
        encoded = adapter.encode_batch(preprocessor, examples[i:i + batch_size], spec)
        out.append({n: encoded[n].numpy() for n in names})
    return out


def export_onnx(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    int8: bool | str = False,
    opset: int = DEFAULT_OPSET,
    tolerance: float = TOLERANCE,
    source: str | None = None,
    calibration: list | None = None,
    encoding=None,
) -> dict[str, Any]:
    """Export the classifier saved in ``folder`` to ``output_dir`` (default ``folder/onnx``):
    ``model.onnx`` and, with ``int8``, ``model_int8.onnx``, the folder's preprocessor files
    and ``export.json`` (what was exported and how, the check's figures; ``source`` names the
    model there, default the folder's name). Returns that record.

    ``int8``: ``True`` or ``"dynamic"`` (weights only), or ``"static"``, which needs
    ``calibration``: raw training examples (texts, images, clips; a few hundred), encoded here
    by the folder's preprocessor (:func:`training_examples` reads them from a recipe's data).
    ``encoding``: the data block (a recipe's ``data``) whose settings (``max_length``,
    ``max_seconds``) encode the calibration and check inputs; default: the block's defaults.
    Raises :class:`DeployError` (one line) when the folder cannot be exported or the check fails."""
    require_onnx()
    mode = int8_mode(int8)
    if mode == "static" and not calibration:
        raise DeployError("static int8 needs calibration examples from the training split: pass calibration=[...] "
                          "(pakd export: --calibration-recipe, or the folder's own pakd_recipe.yaml)")
    folder = Path(folder)
    out = Path(output_dir) if output_dir is not None else folder / ONNX_DIR
    if not 7 <= opset <= 23:
        raise DeployError(f"--opset must be between 7 and 23 (ONNX Runtime's range for these models), got {opset}")
    if out.exists() and read_export_info(out) is None:
        raise FileExistsError(f"{out} exists and was not written by pakd export: choose another --output-dir or remove it")
    model, preprocessor, adapter, spec = _load(folder)
    spec = encoding if encoding is not None else spec
    traced = _examples(adapter, preprocessor, spec, 2, longer=False)
    names = _input_names(model, traced)
    checked = _examples(adapter, preprocessor, spec, 3, longer=True)
    # An audio model's mask runs along its samples, a text model's along its tokens.
    lengths = {**_LENGTH_AXES, **({"attention_mask": "samples"} if "input_values" in names else {})}
    axes = {n: {0: "batch", **({1: lengths[n]} if n in lengths else {})} for n in names}
    axes["logits"] = {0: "batch"}
    length = next((n for n in names if n in lengths), None)
    if length is not None and traced[length].shape[1] >= checked[length].shape[1] and adapter.task == "text-classification":
        # Both cut at the data's max_length: trace shorter texts, so that the check runs a length the trace did not
        shorter = dataclasses.replace(spec, max_length=max(2, int(checked[length].shape[1]) // 2))
        traced = _examples(adapter, preprocessor, shorter, 2, longer=False)
    if length is not None and traced[length].shape[1] == checked[length].shape[1]:
        raise DeployError(f"the check would run the traced length ({traced[length].shape[1]}) only, so the dynamic "
                          f"'{lengths[length]}' axis would go unchecked: raise the data's max_length / max_seconds")

    tmp = _fresh_tmp(out)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")  # tracer and deprecation notes about code paths not taken
            try:
                torch.onnx.export(_Logits(model, names).eval(), tuple(traced[n] for n in names), str(tmp / FP32_FILE),
                                  input_names=names, output_names=["logits"], dynamic_axes=axes,
                                  opset_version=opset, dynamo=False)
            except Exception as e:  # the exporter's errors come from many layers (tracer, symbolic, checker)
                raise DeployError(f"torch.onnx.export failed for {type(model).__name__}: "
                                  f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
        _one_data_file(tmp / FP32_FILE)
        fp32 = OrtModel(tmp / FP32_FILE)
        diff, fp32_logits = _max_diff(fp32, model, checked)
        if not diff <= tolerance:
            raise DeployError(f"the ONNX model's logits differ from PyTorch's by {diff:.3g} (tolerance {tolerance:g}) "
                              f"on inputs of shape {tuple(checked[names[0]].shape)}: the export is not faithful")
        info: dict[str, Any] = {
            "format": FORMAT,
            "source": source or folder.name,
            "task": adapter.task,
            "architecture": type(model).__name__,
            "exporter": "torch.onnx.export, TorchScript path (dynamo=False)",
            "opset": opset,
            "inputs": names,
            "dynamic_axes": {n: list(a.values()) for n, a in axes.items()},
            "labels": [model.config.id2label[i] for i in range(len(model.config.id2label))],
            "trace_shape": list(traced[names[0]].shape),
            "check_shape": list(checked[names[0]].shape),
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "bytes_onnx": onnx_bytes(tmp / FP32_FILE),
            "versions": _versions(),
        }
        if mode:
            batches = calibration_batches(adapter, preprocessor, spec, list(calibration), names) if mode == "static" else None
            _quantize(tmp / FP32_FILE, tmp / INT8_FILE, mode, batches)
            quantized = OrtModel(tmp / INT8_FILE)
            int8_diff, int8_logits = _max_diff(quantized, model, checked)
            info.update({
                "int8": INT8_METHODS[mode],
                "int8_mode": mode,
                **({"int8_calibration_examples": len(calibration)} if mode == "static" else {}),
                "bytes_onnx_int8": onnx_bytes(tmp / INT8_FILE),
                "int8_max_abs_diff": int8_diff,
                "int8_agreement": float((int8_logits.argmax(-1) == fp32_logits.argmax(-1)).mean()),
            })
        preprocessor.save_pretrained(tmp)  # the folder runs on its own: ONNX file + tokenizer / processor
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _replace(tmp, out)  # an earlier `out` is ours (checked above)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info




def export_executorch(
    folder: str | os.PathLike, output_dir: str | os.PathLike | None = None, *, tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Export the classifier saved in ``folder`` to an ExecuTorch program for phones and boards
    (``model.pte``, XNNPACK backend, fp32) in ``output_dir`` (default ``folder/executorch``), with
    its preprocessor and ``export.json``; checked like :func:`export_onnx` in ExecuTorch's own
    runtime. Shapes: batch 1 (one request at a time, as on a device); the token sequence of a
    text model is dynamic up to its position table; images and clips keep the processor's size.
    (XNNPACK's reshape supports one dynamic dimension, and ExecuTorch plans its memory for the
    bounds it is given: a dynamic batch failed to run for ViT and wav2vec2.)"""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
    except ImportError:
        raise DeployError("ExecuTorch export needs executorch: pip install 'pakd-hf[executorch]'") from None
    folder = Path(folder)
    out = Path(output_dir) if output_dir is not None else folder / EXECUTORCH_DIR
    if out.exists() and read_info(out, EXECUTORCH_FORMAT) is None:
        raise FileExistsError(f"{out} exists and was not written by pakd export: choose another --output-dir or remove it")
    model, preprocessor, adapter, spec = _load(folder)
    traced = _examples(adapter, preprocessor, spec, 1, longer=False)
    names = _input_names(model, traced)
    text = adapter.task == "text-classification"
    checked = _examples(adapter, preprocessor, spec, 1, longer=text)
    if text:
        limit = int(getattr(model.config, "max_position_embeddings", 512)) - 2  # RoBERTa's offset of 2
        sequence = torch.export.Dim("sequence", min=2, max=limit)
        shapes = (tuple({1: sequence} for _ in names),)
    else:
        shapes = None
    tmp = _fresh_tmp(out)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            try:
                program = torch.export.export(_Logits(model, names).eval(), tuple(traced[n] for n in names),
                                              dynamic_shapes=shapes)
                buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
            except Exception as e:  # torch.export and the lowering raise many types
                raise DeployError(f"ExecuTorch export failed for {type(model).__name__}: "
                                  f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
        (tmp / PTE_FILE).write_bytes(buffer)
        with torch.inference_mode():
            expected = model(**checked).logits
        try:
            method = Runtime.get().load_program(str(tmp / PTE_FILE)).load_method("forward")
            got = method.execute([checked[n] for n in names])[0]
        except Exception as e:  # the runtime's errors are RuntimeErrors with codes
            raise DeployError(f"the ExecuTorch program does not run: {' '.join(str(e).split())[:300]}") from None
        diff = float((got - expected).abs().max())
        if not diff <= tolerance:
            raise DeployError(f"the ExecuTorch program's logits differ from PyTorch's by {diff:.3g} (tolerance "
                              f"{tolerance:g}): the export is not faithful")
        import executorch

        info = {
            "format": EXECUTORCH_FORMAT, "source": folder.name, "task": adapter.task,
            "architecture": type(model).__name__, "exporter": "torch.export + executorch (XNNPACK, fp32)",
            "inputs": names, "dynamic_axes": {n: (["sequence"] if text else []) for n in names},
            "batch": 1, "labels": [model.config.id2label[i] for i in range(len(model.config.id2label))],
            "trace_shape": list(traced[names[0]].shape),
            "check_shape": list(checked[names[0]].shape), "max_abs_diff": diff, "tolerance": tolerance,
            "bytes_pte": len(buffer),
            "versions": {"torch": torch.__version__, "executorch": getattr(executorch, "__version__", "unknown")},
        }
        preprocessor.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _fresh_tmp(out: Path) -> Path:
    """The folder an export is written in before it is renamed to ``out``: a fixed name beside
    it, so what a killed export left is cleared by the next one (and an ``out`` set aside by a
    kill between the two renames of :func:`_replace` comes back first)."""
    aside = out.parent / f".{out.name}-old"
    if not out.exists() and aside.is_dir():
        aside.rename(out)
    tmp = out.parent / f".{out.name}-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _replace(tmp: Path, out: Path) -> None:
    """``tmp`` renamed to ``out``; an earlier ``out`` (ours: checked by the caller) set aside
    first and removed after, so a kill leaves one whole folder or the other."""
    aside = out.parent / f".{out.name}-old"
    shutil.rmtree(aside, ignore_errors=True)
    if out.exists():
        out.rename(aside)
    tmp.rename(out)
    shutil.rmtree(aside, ignore_errors=True)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


# ---- latency ---------------------------------------------------------------------------------
def compare_onnx(
    runs: dict[str, str | os.PathLike],
    make_inputs: dict[str, Any],
    *,
    threads: int,
    batch_sizes: tuple[int, int] = (1, 32),
    examples: int = 32,
    warmup: int = 3,
    repeats: int = 20,
    min_seconds: float = 0.0,
) -> dict[str, Any]:
    """ONNX Runtime latency (ms, medians) of each named ONNX file, interleaved on the same
    examples with the protocol of :func:`pakd_hf.benchmark.compare_models` (its
    :func:`~pakd_hf.benchmark.interleaved_latency`): ``make_inputs[name](indices)`` encodes
    those examples for that model (outside the timing), batch 1 cycles through the examples
    one per round, batch 32 takes them as one batch. Returns ``latency_ms_b1_<name>``, ... and
    ``ort_threads``."""
    from ..benchmark import interleaved_latency

    models = {name: OrtModel(path, threads) for name, path in runs.items()}
    report: dict[str, Any] = {}
    for bs, key in zip(batch_sizes, ("b1", "b32")):
        batches = {name: [{k: v.numpy() if isinstance(v, torch.Tensor) else v
                           for k, v in make_inputs[name]([(s + i) % examples for i in range(bs)]).items()}
                          for s in range(0, examples, bs)] for name in runs}
        lat, rounds = interleaved_latency({n: (models[n], batches[n]) for n in runs}, warmup, repeats, min_seconds)
        report[f"ort_repeats_{key}"] = rounds
        for name in runs:
            report[f"latency_ms_{key}_{name}"] = round(lat[name], 4)
    report["ort_threads"] = threads
    return report


# The runs `measure_onnx` knows, and the suffix of their report keys.
ORT_RUNS = {"teacher": "teacher_ort", "student": "student_ort", "int8": "student_ort_int8"}


def measure_onnx(
    runs: dict[str, str], *, task: str, spec, examples: list, threads: int, repeats: int, min_seconds: float
) -> dict[str, Any]:
    """ONNX Runtime latencies of ``runs`` ("teacher", "student" and optionally "int8" -> an ONNX
    file), each fed by the preprocessor saved beside its file, on the same raw ``examples``
    (:func:`compare_onnx`). Keys: ``latency_ms_b1_teacher_ort``, ``latency_ms_b1_student_ort``,
    ``latency_ms_b1_student_ort_int8``, ``speedup_b1_ort`` (teacher fp32 over student fp32),
    ``speedup_b1_ort_int8`` (teacher fp32 over student int8), the same for b32. Module-level so
    that `pakd compress` runs it in a fresh process, like the eager benchmark. ``spec``: the
    data block whose encoding settings apply (a recipe's ``data``, or :func:`default_data`)."""
    from .tasks import ADAPTERS

    adapter = ADAPTERS[task]

    def encoder(pre):
        return lambda idx: adapter.encode_batch(pre, [examples[i] for i in idx], spec)

    encoders = {name: encoder(adapter.load_preprocessor(Path(path).parent)) for name, path in runs.items()}
    raw = compare_onnx(runs, encoders, threads=threads, examples=len(examples), repeats=repeats, min_seconds=min_seconds)
    report: dict[str, Any] = {"ort_threads": raw["ort_threads"]}
    for key in ("b1", "b32"):
        report[f"ort_repeats_{key}"] = raw[f"ort_repeats_{key}"]
        for name in runs:
            report[f"latency_ms_{key}_{ORT_RUNS[name]}"] = raw[f"latency_ms_{key}_{name}"]
        for name in runs:
            if name != "teacher":
                suffix = ORT_RUNS[name].removeprefix("student_")
                report[f"speedup_{key}_{suffix}"] = round(raw[f"latency_ms_{key}_teacher"] / raw[f"latency_ms_{key}_{name}"], 3)
    return report


def median_onnx(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several :func:`measure_onnx` runs: per batch size, every figure of the
    run with the median speedup of the int8 student (of the fp32 one without int8), so that a
    row's latencies and ratios agree, and every run's value of that speedup (``..._runs``)."""
    merged = dict(reports[0])
    for key in ("b1", "b32"):
        main = f"speedup_{key}_ort_int8" if f"speedup_{key}_ort_int8" in merged else f"speedup_{key}_ort"
        ranked = sorted(reports, key=lambda r: r[main])
        chosen = ranked[(len(ranked) - 1) // 2]
        merged.update({k: v for k, v in chosen.items() if f"_{key}_" in k or k == f"ort_repeats_{key}"})
        merged[f"{main}_runs"] = [r[main] for r in reports]
    return merged
