"""Saved models: weights in safetensors, everything needed to rebuild them in JSON.

A saved model is two files side by side: ``NAME.safetensors`` (tensors only, no code) and
``NAME.json`` (model name, input shape, classes, pixel scaling, config and metrics).
:func:`load_model` rebuilds the model from the registry; it never unpickles arbitrary
objects: a plain PyTorch ``state_dict`` file is read with ``torch.load(weights_only=True)``
and refused if it needs more than tensors.
"""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ModelError
from .models import create_model
from .results import atomic_write_bytes, write_json

__all__ = ["SavedModel", "save_model", "load_model", "find_saved_models"]

FORMAT_VERSION = 1

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
        return tuple(self.meta["input_shape"])  # type: ignore[return-value]

    def to(self, device) -> "SavedModel":
        self.model.to(device)
        self.mean, self.scale = self.mean.to(device), self.scale.to(device)
        return self

    @torch.no_grad()
    def predict_log_probs(self, raw_images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, C, H, W) raw pixels (uint8 or float) -> (N, classes) log-probabilities."""
        expected = self.input_shape
        if tuple(raw_images.shape[1:]) != expected:
            raise CheckpointError(f"images of shape {tuple(raw_images.shape[1:])} given to a model "
                                  f"trained on {expected}; use a model trained on this size")
        self.model.eval()
        device = self.mean.device
        outputs = []
        for start in range(0, len(raw_images), batch_size):
            batch = raw_images[start:start + batch_size].to(device).float()
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
    tensors = {name: tensor.detach().cpu().contiguous()
               for name, tensor in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors))
    return write_json(path.with_suffix(".json"), {"format": "digitcnn-model",
                                                  "format_version": FORMAT_VERSION,
                                                  "weights": path.name, **meta})


def _read_meta(json_path: Path) -> dict:
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{json_path}: unreadable model metadata ({err}); save the model "
                              "again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{json_path}: holds a JSON {type(meta).__name__}, not digitcnn "
                              "model metadata; pass the .json or .safetensors written by digitcnn")
    missing = [k for k in ("model", "input_shape", "num_classes", "scaler", "classes")
               if k not in meta]
    if meta.get("format") != "digitcnn-model" or missing:
        raise CheckpointError(f"{json_path}: not digitcnn model metadata (missing "
                              f"{', '.join(missing) or 'format'}); pass the .json or "
                              ".safetensors written by digitcnn")
    return meta


def _read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file not found; keep the weights beside "
                              "their .json")
    if weights_path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{weights_path}: corrupt safetensors file ({err}); save the "
                                  "model again") from None
    state = _torch_load_tensors(weights_path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_path}: holds a {type(state).__name__}, not a state_dict "
                              "of tensors; save model.state_dict()")
    return state


def _torch_load_tensors(weights_path: Path):
    try:
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch wraps the unpickler's reason in advice (with terminal colour codes); keep the
        # reason only, so the message stays one readable line.
        # Its advice to retry with weights_only=False (arbitrary code execution) is never
        # repeated: only the lines that say what the file asked for are kept.
        lines = [line.strip() for line in
                 str(err).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()
                 and not re.search(r"weights.only|Check the documentation", line, re.I)]
        reason = lines[0] if lines else "the weights-only unpickler refused it"
        unsafe = _UNSAFE_PICKLE.search(reason)
        if unsafe:
            what = unsafe.group(1) or reason
            raise CheckpointError(f"{weights_path}: refused: loading it would unpickle arbitrary "
                                  f"Python objects ({what}); save only a state_dict of tensors, "
                                  "or use safetensors") from None
        raise CheckpointError(f"{weights_path}: not a readable PyTorch file ({reason}); save the "
                              "model again") from None
    except Exception as err:  # noqa: BLE001 - junk bytes fail in torch's readers in many ways
        raise CheckpointError(f"{weights_path}: not a readable PyTorch file "
                              f"({type(err).__name__}: {_detail(err)}); save the model "
                              "again") from None


def _detail(err: Exception, limit: int = 200) -> str:
    """The most specific line of an error message, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # load_state_dict's first line only names the model; the next says what does not fit.
    line = lines[1] if len(lines) > 1 and lines[0].endswith(":") else (lines or ["no detail"])[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _scaling(meta: dict, json_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    scaler = meta["scaler"]
    features = int(np.prod(meta["input_shape"]))
    try:
        mean = torch.as_tensor(np.asarray(scaler["mean"], dtype=np.float64), dtype=torch.float32)
        scale = torch.as_tensor(np.asarray(scaler["scale"], dtype=np.float64),
                                dtype=torch.float32)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{json_path}: unreadable scaler ({type(err).__name__}: {err}); it "
                              "needs 'mean' and 'scale' lists of numbers") from None
    if mean.shape != (features,) or scale.shape != (features,):
        raise CheckpointError(f"{json_path}: scaler has {tuple(mean.shape)} means and "
                              f"{tuple(scale.shape)} scales for {features} pixels of input "
                              f"{tuple(meta['input_shape'])}; save the model again")
    return mean, scale


def load_model(path: str | Path) -> SavedModel:
    """Rebuild a saved model from its ``.json``, its ``.safetensors``/``.pt``, or their folder."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.json"))
        models = [p for p in candidates if p.name not in ("metrics.json", "config.json",
                                                          "splits.json")]
        if len(models) != 1:
            raise CheckpointError(f"{path}: expected one model .json in the folder, found "
                                  f"{len(models)}; pass the model file itself")
        path = models[0]
    json_path = path if path.suffix == ".json" else path.with_suffix(".json")
    if not json_path.is_file():
        raise CheckpointError(f"{json_path}: model metadata not found; a digitcnn model is a "
                              ".safetensors file with a .json beside it")
    meta = _read_meta(json_path)
    weights_path = path if path.suffix in (".safetensors", ".pt", ".pth") else \
        json_path.with_name(meta.get("weights", json_path.stem + ".safetensors"))
    mean, scale = _scaling(meta, json_path)
    state = _read_weights(weights_path)
    try:
        model = create_model(meta["model"], tuple(meta["input_shape"]), meta["num_classes"],
                             init="default", **meta.get("model_options", {}))
    except ModelError as err:
        raise CheckpointError(f"{json_path}: {err}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{weights_path}: weights do not fit model {meta['model']!r} "
                              f"({_detail(err)}); check the .json beside it") from None
    return SavedModel(model.eval(), meta, mean, scale)


def find_saved_models(run_dir: str | Path) -> list[Path]:
    """The fold models of a K-fold run directory (``folds/fold<k>/model.json``), in fold order
    (fold2 before fold10); other folders are ignored."""
    numbered = [(int(match.group(1)), path)
                for path in Path(run_dir).glob("folds/fold*/model.json")
                if (match := re.fullmatch(r"fold(\d+)", path.parent.name))]
    return [path for _, path in sorted(numbered)]
