"""Load a trained model for inference: from a fusionseg checkpoint, a saved model folder
(``fusionseg hub save``; also ``hf://ORG/NAME`` on the Hugging Face hub) or an exported ONNX file.

The one path from a file to a ready model, used by prediction and by the ONNX export. A
checkpoint file is read once (:func:`~fusionseg.models.weights.read_weights_file`, never
unpickling code); its contents give the stored ``fusionseg_*`` entries (config, classes,
palette, modality specs) and are handed on to
:func:`~fusionseg.models.weights.load_checkpoint` for the weights. An ONNX file carries the
same entries as JSON metadata (:class:`~fusionseg.inference.onnx_model.OnnxModel`). A saved
model folder is read into the same contents a checkpoint gives
(:func:`fusionseg.hub_files.read_model_source`), so it takes the same path.

Nothing here imports the training stack (Lightning, ``fusionseg.engine``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..config import Config, config_from_dict, load_config, model_spec
from ..errors import CheckpointError, ConfigError
from ..hub_files import read_model_source
from ..models import create_model, load_checkpoint
from ..models.weights import read_weights_file
from .onnx_model import OnnxModel

__all__ = ["LoadedModel", "load_checkpoint_model", "load_onnx_model", "load_predictor",
           "model_from_contents", "stored_meta"]

#: the prefix of the entries a training checkpoint (and an ONNX export) stores beside weights
META_PREFIX = "fusionseg_"


class LoadedModel(NamedTuple):
    """A model ready for inference, with what its file says about it.

    Attributes:
        model: in eval mode; a ``torch.nn.Module`` or an :class:`OnnxModel`, both mapping a
            batch dict to logits ``[B, K, H, W]``.
        meta: the file's ``fusionseg_*`` entries (JSON text already parsed), plus
            ``"source"``: the file, for messages.
        cfg: the run config.
    """

    model: Any
    meta: dict[str, Any]
    cfg: Config


def _meta_value(value: Any) -> Any:
    if isinstance(value, str):
        try:  # ONNX metadata is text; a checkpoint already holds the objects
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def stored_meta(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """The ``fusionseg_*`` entries of a checkpoint dict or of ONNX metadata, JSON text parsed
    (a value that is not JSON is kept as text)."""
    return {str(k): _meta_value(raw[k]) for k in raw if str(k).startswith(META_PREFIX)}


def _run_config(meta: Mapping[str, Any], config: str | Path | None, source: str | Path
                ) -> Config:
    """``config`` when given, else the stored ``fusionseg_config``.

    Raises:
        CheckpointError: neither is there.
        ConfigError: an invalid config.
    """
    if config is not None:
        return load_config(config)
    if isinstance(meta.get("fusionseg_config"), dict):
        return config_from_dict(meta["fusionseg_config"], source=str(source))
    raise CheckpointError(f"{source}: holds no fusionseg config; pass --config")


def load_checkpoint_model(path: str | Path, config: str | Path | None = None) -> LoadedModel:
    """Build the model of a fusionseg checkpoint and load its weights (the file read once).

    Args:
        path: a fusionseg / Lightning checkpoint (``state_dict`` with the ``model.`` prefix and
            ``fusionseg_config`` / ``fusionseg_classes`` / ``fusionseg_palette`` /
            ``fusionseg_specs``), or a plain state dict together with ``config``; or a saved
            model folder (``model.safetensors`` + ``config.json``, ``fusionseg hub save``), or
            ``hf://ORG/NAME[@REVISION]`` (:mod:`fusionseg.hub_files`).
        config: a YAML config replacing the stored one.

    Raises:
        ConfigError: an invalid config; the number of classes unknown (neither
            ``model.num_classes`` nor stored classes).
        CheckpointError: the file is missing, cannot be read safely (a checkpoint naming
            Python objects beyond tensors and plain containers is refused, never unpickled:
            :func:`fusionseg.serialization.read_checkpoint`), holds no config and none is given,
            or does not fit the model (:class:`~fusionseg.models.CheckpointMismatchError`); a
            folder or ``hf://`` repository that is not a saved fusionseg model, or that cannot
            be found (offline and not in the cache).
    """
    # never unpickles code (weights_only=True; a folder is safetensors + JSON)
    resolved, contents = read_model_source(path, read_weights_file)
    return model_from_contents(contents, resolved.name, config)


def model_from_contents(contents: object, source: str, config: str | Path | None = None
                        ) -> LoadedModel:
    """:func:`load_checkpoint_model` on contents already read (``read_model_source``):
    build the model of the stored (or given) config and load the weights strictly.

    Args:
        contents: what reading the checkpoint gave (a mapping with ``"state_dict"`` and the
            ``fusionseg_*`` entries, or a plain state dict).
        source: how messages name it (a path or an ``hf://`` URI).
        config: a YAML config replacing the stored one.

    Raises:
        ConfigError, CheckpointError: as :func:`load_checkpoint_model`.
    """
    meta = stored_meta(contents) if isinstance(contents, Mapping) else {}
    cfg = _run_config(meta, config, source)
    classes = meta.get("fusionseg_classes")
    num_classes = cfg.model.num_classes or (len(classes) if classes else None)
    if num_classes is None:
        raise ConfigError(f"{source}: number of classes unknown; set model.num_classes")
    # the checkpoint replaces the backbone weights: model.pretrained is not read
    model = create_model(model_spec(cfg, num_classes, for_checkpoint=True))
    load_checkpoint(model, source, contents)  # the contents read above, not the file again
    meta["source"] = source
    return LoadedModel(model.eval(), meta, cfg)


def load_onnx_model(path: str | Path, config: str | Path | None = None) -> LoadedModel:
    """Open an ONNX file written by ``fusionseg export`` with ONNX Runtime.

    Raises:
        CheckpointError: no file at ``path``; no ``logits`` output; no stored config and
            ``config`` not given.
        ConfigError: an invalid config.
    """
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: ONNX file not found")
    model = OnnxModel(source).eval()
    meta = stored_meta(dict(getattr(model, "meta", {}) or {}))
    cfg = _run_config(meta, config, source)
    meta["source"] = str(source)
    return LoadedModel(model, meta, cfg)


def load_predictor(ckpt: str | Path | None = None, onnx: str | Path | None = None,
                   config: str | Path | None = None) -> LoadedModel:
    """Load a model for prediction from a checkpoint or an exported ONNX file.

    Args:
        ckpt: a checkpoint, a saved model folder or ``hf://ORG/NAME[@REVISION]``
            (:func:`load_checkpoint_model`).
        onnx: an ONNX file written by ``fusionseg export`` (:func:`load_onnx_model`).
        config: a YAML config replacing the one stored in the checkpoint / ONNX metadata.

    Returns:
        :class:`LoadedModel` ``(model, meta, cfg)``.

    Raises:
        ConfigError: neither or both of ``ckpt`` / ``onnx``; and as the two loaders.
        CheckpointError: as the two loaders.
    """
    if (ckpt is None) == (onnx is None):
        raise ConfigError("give exactly one of a checkpoint (--ckpt) or an ONNX file (--onnx)")
    if onnx is not None:
        return load_onnx_model(onnx, config)
    return load_checkpoint_model(ckpt, config)
