"""Saved models: weights in safetensors, everything needed to rebuild them in JSON.

A saved model is two files side by side: ``NAME.safetensors`` (tensors only, no code) and
``NAME.json`` (model name, input shape, classes, pixel scaling, config and metrics).
:func:`load_model` rebuilds the model from the registry; it never unpickles arbitrary
objects: a plain PyTorch ``state_dict`` file is read with ``torch.load(weights_only=True)``
and refused if it needs more than tensors.

The JSON is input like any other (models are shared), so it is validated completely before
anything is allocated: the model is first built on the ``meta`` device, which gives every
tensor's shape without memory, and the safetensors header must list exactly those tensors,
shapes and dtypes before one tensor is read.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from digitcnn._io import atomic_write_bytes, sha256_of, write_json
from digitcnn.errors import CheckpointError, ModelError
from digitcnn.models import create_model, model_spec
from digitcnn.training.scaling import Scaler

__all__ = ["SavedModel", "save_model", "load_model", "find_saved_models"]

FORMAT_VERSION = 1

# Sane bounds for what a model.json may describe. Digit images are 8x8 to 28x28 (SVHN-like
# 32x32 in colour); 128x128 and 4 channels leave room while keeping the largest registered
# model at that size (s4: 64*32*32*256 linear weights) near 70 MB.
MAX_CHANNELS = 4
MAX_SIDE = 128
MAX_CLASSES = 1000
# A model.json holds per-pixel scaler lists: 2 * 4*128*128 numbers fit comfortably in this.
MAX_META_BYTES = 32 * 1024 * 1024
# The tensors a model.json may ask for, in bytes (checked on the meta device, before any).
MAX_MODEL_BYTES = 512 * 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
# safetensors' dtype names of the tensors digitcnn models hold.
_DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

# What torch's weights-only unpickler says when a file asks for a Python object it will not
# build; anything else it raises means the bytes are not a (complete) PyTorch file.
_UNSAFE_PICKLE = re.compile(r"GLOBAL (\S+)|allowlisted|unrecognized function|is blocked")


@dataclass
class SavedModel:
    """A rebuilt model with its metadata.

    Attributes:
        model: the ``nn.Sequential`` in eval mode, on the CPU.
        meta: the JSON metadata (model, input_shape, classes, scaler, config, metrics).
        mean, scale: (C*H*W,) float32 pixel scaling: input = (raw - mean) / scale.
    """

    model: nn.Module
    meta: dict
    mean: torch.Tensor
    scale: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.meta["input_shape"]
        return (channels, height, width)

    def to(self, device) -> SavedModel:
        self.model.to(device)
        self.mean, self.scale = self.mean.to(device), self.scale.to(device)
        return self

    @torch.no_grad()
    def predict_log_probs(self, raw_images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, C, H, W) raw pixels (uint8 or float) -> (N, classes) log-probabilities."""
        expected = self.input_shape
        if tuple(raw_images.shape[1:]) != expected:
            raise CheckpointError(
                f"images of shape {tuple(raw_images.shape[1:])} given to a model "
                f"trained on {expected}; use a model trained on this size"
            )
        self.model.eval()
        device = self.mean.device
        outputs = []
        for start in range(0, len(raw_images), batch_size):
            batch = raw_images[start : start + batch_size].to(device).float()
            scaled = (batch.reshape(len(batch), -1) - self.mean) / self.scale
            outputs.append(self.model(scaled.reshape(batch.shape)).float().cpu())
        return torch.cat(outputs) if outputs else torch.zeros(0, len(self.meta["classes"]))


def save_model(model: nn.Module, path: str | Path, *, meta: dict[str, Any]) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` metadata; returns the JSON path.

    ``meta`` must hold ``model``, ``input_shape``, ``num_classes``, ``model_options``,
    ``init``, ``scaler`` ({kind, mean, scale}) and ``classes``; config and metrics are
    welcome.
    """
    from safetensors.torch import save

    path = Path(path).with_suffix(".safetensors")
    # safetensors stores dense row-major tensors; channels_last weights are made contiguous.
    tensors = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    data = save(tensors)
    atomic_write_bytes(path, data)
    return write_json(
        path.with_suffix(".json"),
        {
            "format": "digitcnn-model",
            "format_version": FORMAT_VERSION,
            "weights": path.name,
            "weights_sha256": hashlib.sha256(data).hexdigest(),
            **meta,
        },
    )


def _read_meta(json_path: Path) -> dict:
    try:
        size = json_path.stat().st_size
        if size > MAX_META_BYTES:
            raise CheckpointError(
                f"{json_path}: {size:,} bytes is too large for model "
                f"metadata (at most {MAX_META_BYTES:,}); save the model again"
            )
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError: JSON syntax, and integers too long to convert
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"{json_path}: unreadable model metadata ({_detail(err)}); save the model again"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{json_path}: holds a JSON {type(meta).__name__}, not digitcnn "
            "model metadata; pass the .json or .safetensors written by digitcnn"
        )
    missing = [
        k for k in ("model", "input_shape", "num_classes", "scaler", "classes") if k not in meta
    ]
    if meta.get("format") != "digitcnn-model" or missing:
        raise CheckpointError(
            f"{json_path}: not digitcnn model metadata (missing "
            f"{', '.join(missing) or 'format'}); pass the .json or "
            ".safetensors written by digitcnn"
        )
    return meta


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _like(value, default) -> bool:
    """Whether ``value`` has the type of a builder option's ``default`` (a float option takes
    any finite number)."""
    if isinstance(default, float):
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    return type(value) is type(default)


def _check_meta(meta: dict, json_path: Path) -> Scaler:
    """Every field load_model uses, checked before anything is built; returns the scaler.

    Raises CheckpointError naming the file, the field and the fix."""

    def refuse(field: str, problem: str, fix: str = "save the model again") -> CheckpointError:
        return CheckpointError(f"{json_path}: {field} {problem}; {fix}")

    version = meta.get("format_version", FORMAT_VERSION)
    if not _whole(version) or not 1 <= version <= FORMAT_VERSION:
        raise refuse(
            "format_version",
            f"{version!r} is not one this digitcnn reads (1..{FORMAT_VERSION})",
            "upgrade digitcnn or save the model again",
        )
    if not isinstance(meta["model"], str):
        raise refuse("model", f"{meta['model']!r} is not a model name")
    try:
        spec = model_spec(meta["model"])
    except ModelError as err:
        raise CheckpointError(f"{json_path}: {err}") from None
    shape = meta["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(map(_whole, shape))):
        raise refuse("input_shape", f"{shape!r} is not [channels, height, width] of whole numbers")
    channels, height, width = shape
    if not 1 <= channels <= MAX_CHANNELS:
        raise refuse(
            "input_shape", f"has {channels} channels; a digit model takes 1 to {MAX_CHANNELS}"
        )
    if not (spec.min_size <= height <= MAX_SIDE and spec.min_size <= width <= MAX_SIDE):
        raise refuse(
            "input_shape",
            f"{height}x{width} is outside the sizes model "
            f"{spec.name!r} accepts here ({spec.min_size} to {MAX_SIDE} pixels a side)",
        )
    classes, count = meta["classes"], meta["num_classes"]
    if not (
        isinstance(classes, list)
        and 1 <= len(classes) <= MAX_CLASSES
        and all(_whole(c) or isinstance(c, str) for c in classes)
    ):
        raise refuse(
            "classes", f"must be a list of 1 to {MAX_CLASSES} class labels (whole numbers or text)"
        )
    if len({repr(c) for c in classes}) != len(classes):
        raise refuse("classes", "lists a class twice")
    if not _whole(count) or count != len(classes):
        raise refuse(
            "num_classes",
            f"{count!r} does not match the {len(classes)} entries of classes",
            "make num_classes the number of classes, or save the model again",
        )
    options = meta.get("model_options", {})
    if not isinstance(options, dict):
        raise refuse("model_options", f"{options!r} is not an object of builder options")
    parameters = inspect.signature(spec.builder).parameters
    for name, value in options.items():
        known = parameters.get(name)
        if name in ("input_shape", "num_classes") or known is None:
            raise refuse("model_options", f"{name!r} is not an option of model {spec.name!r}")
        if not _like(value, known.default):
            raise refuse(
                "model_options",
                f"{name} = {value!r} is not a value like its default {known.default!r}",
            )
    weights = meta.get("weights", json_path.stem + ".safetensors")
    if not (
        isinstance(weights, str)
        and weights == Path(weights).name
        and weights not in ("", ".", "..")
        and "\\" not in weights
        and Path(weights).suffix in WEIGHT_SUFFIXES
    ):
        raise refuse(
            "weights",
            f"{weights!r} is not the bare name of a weights file "
            "(.safetensors, .pt or .pth) in the model's folder",
            'name the file beside the .json, e.g. "weights": "model.safetensors"',
        )
    digest = meta.get("weights_sha256")
    if digest is not None and not (
        isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
    ):
        raise refuse("weights_sha256", f"{digest!r} is not a SHA-256 hex digest")
    return Scaler.from_dict(meta["scaler"], channels * height * width, str(json_path))


def _meta_model(meta: dict, json_path: Path) -> nn.Module:
    """The model ``meta`` describes, built on the ``meta`` device: shapes, no memory."""
    try:
        with torch.device("meta"):
            model = create_model(
                meta["model"],
                tuple(meta["input_shape"]),
                meta["num_classes"],
                init="default",
                **meta.get("model_options", {}),
            )
    except ModelError as err:
        raise CheckpointError(f"{json_path}: {err}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise CheckpointError(
            f"{json_path}: model_options {meta.get('model_options')!r} do not "
            f"build model {meta['model']!r} ({_detail(err)}); save the model "
            "again"
        ) from None
    state = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    if size > MAX_MODEL_BYTES:
        raise CheckpointError(
            f"{json_path}: the model it describes needs {size:,} bytes of "
            f"weights (at most {MAX_MODEL_BYTES:,}); save the model again"
        )
    return model


def _header_of(weights_path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of a safetensors file, from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            return {
                name: (
                    tuple(handle.get_slice(name).get_shape()),
                    handle.get_slice(name).get_dtype(),
                )
                for name in handle.keys()
            }
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{weights_path}: corrupt safetensors file ({_detail(err)}); save the model again"
        ) from None


def _names(names: list[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(name) for name in names[:shown]) + more


def _check_fits(
    found: dict[str, tuple[tuple[int, ...], str]],
    model: nn.Module,
    model_name: str,
    weights_path: Path,
) -> None:
    """The tensors ``found`` (names, shapes, dtypes) are exactly those of ``model``."""
    expected = {
        name: (tuple(t.shape), _DTYPE_NAMES.get(t.dtype, str(t.dtype)))
        for name, t in model.state_dict().items()
    }
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    wrong = [
        f"{name!r} is {list(found[name][0])} {found[name][1]}, the model needs "
        f"{list(shape)} {dtype}"
        for name, (shape, dtype) in expected.items()
        if name in found and found[name] != (shape, dtype)
    ]
    problems = (
        ([f"missing tensor(s) {_names(missing)}"] if missing else [])
        + ([f"unexpected tensor(s) {_names(unexpected)}"] if unexpected else [])
        + wrong[:1]
    )
    if problems:
        raise CheckpointError(
            f"{weights_path}: weights do not fit model {model_name!r} "
            f"({'; '.join(problems)}); check the .json beside it, or save the "
            "model again"
        )


def _read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise CheckpointError(
            f"{weights_path}: weights file not found; keep the weights beside their .json"
        )
    if weights_path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"{weights_path}: corrupt safetensors file ({err}); save the model again"
            ) from None
    state = _torch_load_tensors(weights_path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{weights_path}: holds a {type(state).__name__}, not a state_dict "
            "of tensors; save model.state_dict()"
        )
    return state


def _torch_load_tensors(weights_path: Path):
    try:
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch wraps the unpickler's reason in advice (with terminal colour codes); keep the
        # reason only, so the message stays one readable line.
        # Its advice to retry with weights_only=False (arbitrary code execution) is never
        # repeated: only the lines that say what the file asked for are kept.
        lines = [
            line.strip()
            for line in str(err).split("WeightsUnpickler error:")[-1].splitlines()
            if line.strip() and not re.search(r"weights.only|Check the documentation", line, re.I)
        ]
        reason = lines[0] if lines else "the weights-only unpickler refused it"
        unsafe = _UNSAFE_PICKLE.search(reason)
        if unsafe:
            what = unsafe.group(1) or reason
            raise CheckpointError(
                f"{weights_path}: refused: loading it would unpickle arbitrary "
                f"Python objects ({what}); save only a state_dict of tensors, "
                "or use safetensors"
            ) from None
        raise CheckpointError(
            f"{weights_path}: not a readable PyTorch file ({reason}); save the model again"
        ) from None
    except Exception as err:  # noqa: BLE001 - junk bytes fail in torch's readers in many ways
        raise CheckpointError(
            f"{weights_path}: not a readable PyTorch file "
            f"({type(err).__name__}: {_detail(err)}); save the model "
            "again"
        ) from None


def _detail(err: Exception, limit: int = 200) -> str:
    """The most specific line of an error message, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # load_state_dict's first line only names the model; the next says what does not fit.
    line = lines[1] if len(lines) > 1 and lines[0].endswith(":") else (lines or ["no detail"])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_model(path: str | Path) -> SavedModel:
    """Rebuild a saved model from its ``.json``, its ``.safetensors``/``.pt``, or their folder."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.json"))
        models = [
            p for p in candidates if p.name not in ("metrics.json", "config.json", "splits.json")
        ]
        if len(models) != 1:
            raise CheckpointError(
                f"{path}: expected one model .json in the folder, found "
                f"{len(models)}; pass the model file itself"
            )
        path = models[0]
    json_path = path if path.suffix == ".json" else path.with_suffix(".json")
    if not json_path.is_file():
        raise CheckpointError(
            f"{json_path}: model metadata not found; a digitcnn model is a "
            ".safetensors file with a .json beside it"
        )
    meta = _read_meta(json_path)
    scaler = _check_meta(meta, json_path)
    weights_path = (
        path
        if path.suffix in WEIGHT_SUFFIXES
        else json_path.with_name(meta.get("weights", json_path.stem + ".safetensors"))
    )
    if not weights_path.resolve().is_relative_to(json_path.parent.resolve()):
        raise CheckpointError(
            f"{weights_path}: the weights lead outside the model's folder "
            f"{json_path.parent}; keep the weights file itself beside the .json"
        )
    template = _meta_model(meta, json_path)
    if weights_path.suffix == ".safetensors" and weights_path.is_file():
        _check_fits(_header_of(weights_path), template, meta["model"], weights_path)
    # The digest is of the file the .json names (absent in models saved before it was kept).
    expected = meta.get("weights_sha256") if weights_path.name == meta.get("weights") else None
    if expected is not None and weights_path.is_file() and sha256_of(weights_path) != expected:
        raise CheckpointError(
            f"{weights_path}: contents differ from the weights_sha256 in "
            f"{json_path.name}; the weights were changed or belong to another "
            "model: keep each model's files together, or save it again"
        )
    state = _read_weights(weights_path)
    _check_fits(
        {
            name: (tuple(t.shape), _DTYPE_NAMES.get(t.dtype, str(t.dtype)))
            for name, t in state.items()
        },
        template,
        meta["model"],
        weights_path,
    )
    model = create_model(
        meta["model"],
        tuple(meta["input_shape"]),
        meta["num_classes"],
        init="default",
        **meta.get("model_options", {}),
    )
    model.load_state_dict(state)
    mean = torch.as_tensor(scaler.mean, dtype=torch.float32)
    scale = torch.as_tensor(scaler.scale, dtype=torch.float32)
    return SavedModel(model.eval(), meta, mean, scale)


def find_saved_models(run_dir: str | Path) -> list[Path]:
    """The fold models of a K-fold run directory (``folds/fold<k>/model.json``), in fold order
    (fold2 before fold10); other folders are ignored."""
    numbered = [
        (int(match.group(1)), path)
        for path in Path(run_dir).glob("folds/fold*/model.json")
        if (match := re.fullmatch(r"fold(\d+)", path.parent.name))
    ]
    return [path for _, path in sorted(numbered)]
