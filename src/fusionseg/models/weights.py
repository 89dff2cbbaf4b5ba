"""Reading checkpoint files and loading them strictly, with clear errors.

This module knows files and key matching, not formats: every official or released key format
is converted by the module it belongs to.

* :func:`load_state_dict_file` reads ``.pth`` / ``.pt`` / ``.ckpt`` (``torch.load`` with
  ``weights_only=True`` on CPU) and ``.safetensors`` files, unwrapping a state dict nested under
  ``"state_dict"``, ``"model"`` or ``"model_state_dict"``.
* :func:`load_backbone_weights` loads an official backbone file (e.g. NVlabs SegFormer
  ``mit_b2.pth``) into a backbone after the backbone's own ``checkpoint_filter_fn`` (see
  :mod:`fusionseg.models.backbones.base`) mapped it to our keys.
* :func:`load_checkpoint` loads a whole-model checkpoint: a fusionseg / Lightning checkpoint
  (``{"state_dict": {"model.<key>": ...}, ...}``; the ``model.`` prefix is stripped and keys of
  the LightningModule outside ``model.`` are ignored), a DDP-wrapped (``module.``) or plain
  state dict of the model, or a released format of the model's method, converted by the
  segmentor class's ``checkpoint_filter_fn`` (see
  :meth:`fusionseg.models.segmentors.base.Segmentor.checkpoint_filter_fn`) - for that model
  only.
* :func:`convert_checkpoint` writes a file in our key names (``fusionseg weights convert``).

All mismatches raise :class:`CheckpointMismatchError` (a ``ValueError``) naming the file and
listing the missing, unexpected and shape-mismatched keys.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointMismatchError",
    "convert_backbone_checkpoint",
    "convert_checkpoint",
    "load_backbone_weights",
    "load_checkpoint",
    "load_state_dict_file",
    "load_state_dict_strict",
    "rename_key",
    "rename_keys",
    "save_state_dict",
    "to_model_keys",
]

StateDict = dict[str, Tensor]

_MAX_LISTED = 10


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the module it is loaded into.

    Attributes: ``path``, ``missing``, ``unexpected`` (lists of keys) and ``mismatched``
    (list of ``(key, checkpoint_shape, model_shape)``).
    """

    def __init__(
        self,
        path: str | Path,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple, tuple]],
    ) -> None:
        self.path = str(path)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {_head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {_head(unexpected)}")
        if mismatched:
            items = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
            parts.append(f"{len(mismatched)} shape mismatch(es) {_head(items)}")
        super().__init__(f"checkpoint {self.path} does not match the model: " + "; ".join(parts))


def _head(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


# --------------------------------------------------------------------------- reading files
def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _read_raw(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) - it is not a plain "
            f"tensor checkpoint or holds arbitrary Python objects ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable PyTorch file ({e})") from e


def _unwrap(obj: object) -> object:
    """Return the tensor mapping inside ``obj`` (``obj``, ``obj['state_dict']``, ``obj['model']``,
    ``obj['model_state_dict']`` - the training checkpoints of the DELIVER/StitchFusion code)."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if _is_state_dict(inner):
                return inner
    return obj


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read a state dict from a local file.

    Args:
        path: ``.pth`` / ``.pt`` / ``.ckpt`` (read with ``torch.load(weights_only=True,
            map_location="cpu")``) or ``.safetensors``.

    Returns:
        ``dict[str, Tensor]`` (CPU). A dict nested under ``"state_dict"`` (mmseg, Lightning) or
        ``"model"`` (DeiT-style files) or ``"model_state_dict"`` (DELIVER/StitchFusion training
        checkpoints) is unwrapped; keys are kept as stored.

    Raises:
        FileNotFoundError: ``path`` does not exist (message names it).
        ValueError: the file cannot be read or holds no ``str -> Tensor`` mapping (message names
            the path).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    sd = _unwrap(_read_raw(path))
    if not _is_state_dict(sd):
        what = type(sd).__name__
        if isinstance(sd, Mapping):
            bad = next(
                (k for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, Tensor))),
                None,
            )
            what = f"{what} with keys {list(sd)[:5]}" + (
                f" (non-tensor entry {bad!r})" if bad else ""
            )
        raise ValueError(
            f"{path}: not a state dict (expected a mapping of str -> Tensor, possibly under "
            f"'state_dict' or 'model'; found {what})"
        )
    return dict(sd)


# --------------------------------------------------------------------------- strict loading
def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], path: str | Path
) -> None:
    """Load ``state_dict`` into ``module`` strictly (names and shapes).

    Raises:
        CheckpointMismatchError: missing keys, unexpected keys or shape mismatches; nothing is
            loaded in that case.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(path, missing, unexpected, mismatched)
    module.load_state_dict(state_dict, strict=True)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> nn.Module:
    """Load an official backbone checkpoint into ``backbone`` (in place) and return it.

    The file's state dict goes through ``backbone.checkpoint_filter_fn`` first (for
    :class:`~fusionseg.models.backbones.mit.MixVisionTransformer`: drop the ImageNet classifier
    ``head.weight`` / ``head.bias`` of the NVlabs ``mit_b*.pth`` files, strip ``module.`` /
    ``backbone.`` prefixes); then every key must match in name and shape.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_state_dict_file`.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches.
    """
    sd = load_state_dict_file(path)
    filter_fn = getattr(backbone, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        sd = filter_fn(sd)
    load_state_dict_strict(backbone, sd, path)
    return backbone


# --------------------------------------------------------------------------- key renaming
def rename_key(key: str, rules) -> str:
    """``key`` renamed by the first of ``rules`` (``(pattern, replacement)`` pairs, patterns as
    strings or compiled, matched at the start with :func:`re.match`) that matches; unchanged
    when none does."""
    for pat, rep in rules:
        if re.match(pat, key):
            return re.sub(pat, rep, key, count=1)
    return key


def rename_keys(state_dict: Mapping[str, Tensor], rules) -> StateDict:
    """A state dict with every key renamed by :func:`rename_key` (tensors not copied). The
    released-format converters of backbones and segmentors are tables of such rules."""
    return {rename_key(k, rules): v for k, v in state_dict.items()}


# --------------------------------------------------------------------------- whole models
def _strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def to_model_keys(sd: Mapping[str, Tensor], model: nn.Module | None,
                  segmentor: type | None = None) -> StateDict:
    """Map a whole-model state dict to ``model``'s keys.

    1. A LightningModule ``model.`` prefix is stripped (only those keys are kept) and a DDP
       ``module.`` prefix carried by every key is stripped, unless the model's own keys start
       with them.
    2. The segmentor class's ``checkpoint_filter_fn(state_dict, model)`` converts a released
       format of its method (``segmentor`` or ``type(model)``; classes without one keep the
       keys).
    """
    own_keys = list(model.state_dict().keys()) if model is not None else []
    sd = dict(sd)
    for prefix, keep_only in (("model.", True), ("module.", False)):
        if any(k.startswith(prefix) for k in own_keys):
            continue
        if (keep_only and any(k.startswith(prefix) for k in sd)) or (
            sd and all(k.startswith(prefix) for k in sd)
        ):
            sd = _strip_prefix(sd, prefix)
    cls = segmentor if segmentor is not None else (type(model) if model is not None else None)
    filter_fn = getattr(cls, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    return sd


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a whole-model checkpoint into ``model`` (in place, strict) and return it.

    Accepted files:
      * fusionseg / Lightning checkpoints ``{"state_dict": {...}, ...}`` whose model keys carry
        the ``model.`` prefix of the LightningModule attribute: only ``model.*`` keys are used,
        with the prefix stripped (other LightningModule entries, e.g. loss buffers, are
        ignored);
      * a plain state dict of the model (``.pth`` / ``.pt`` / ``.safetensors``, or nested
        under ``"state_dict"`` / ``"model"`` / ``"model_state_dict"``), DDP ``module.`` prefix
        allowed;
      * the released format of the model's own method, converted by
        ``type(model).checkpoint_filter_fn`` (e.g. the StitchFusion authors' files for a
        :class:`~fusionseg.models.segmentors.stitchfusion.StitchFusionSegmentor`).

    Raises:
        FileNotFoundError, ValueError: see :func:`load_state_dict_file`.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches.
    """
    sd = to_model_keys(load_state_dict_file(path), model)
    load_state_dict_strict(model, sd, path)
    return model


def save_state_dict(sd: Mapping[str, Tensor], dst: str | Path,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``sd`` atomically (temporary file + fsync + rename): ``.safetensors`` as a
    safetensors file, anything else as ``torch.save({"state_dict": sd, **metadata})``.

    A crash while writing leaves an earlier ``dst`` untouched. Returns ``Path(dst)``.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    try:
        if dst.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(tmp),
                      metadata=meta)
        else:
            torch.save({"state_dict": dict(sd), **meta}, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def convert_backbone_checkpoint(src: str | Path, dst: str | Path, backbone: nn.Module) -> Path:
    """Convert a pretrained-encoder file (e.g. a Hugging Face ``facebook/dinov2-small``
    ``model.safetensors``) to the official key names ``backbone`` uses, through its
    ``checkpoint_filter_fn``; the result loads strictly (checked) and is written to ``dst``.

    Raises:
        FileNotFoundError, ValueError, CheckpointMismatchError: unreadable source, or weights
            that do not fit ``backbone``.
    """
    load_backbone_weights(backbone, src)
    return save_state_dict(backbone.state_dict(), dst, {"fusionseg_source": str(src)})


def _detect_segmentor(sd: StateDict) -> type | None:
    """The registered segmentor class whose ``is_released_format`` recognises ``sd``."""
    from .registry import MODELS

    seen: set[type] = set()
    for entry in MODELS.entries():
        cls = entry.info.get("segmentor")
        if cls is None or cls in seen:
            continue
        seen.add(cls)
        detect = getattr(cls, "is_released_format", None)
        if detect is not None and detect(sd):
            return cls
    return None


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    model: nn.Module | None = None,
    segmentor: type | None = None,
) -> Path:
    """Convert a checkpoint in a released format (e.g. a StitchFusion authors' ``.pth``) to
    fusionseg's: a state dict in our key names that :func:`load_checkpoint` reads.

    Args:
        src: the source file (any format :func:`load_checkpoint` accepts).
        dst: output path; ``.safetensors`` writes a safetensors file, anything else a
            ``torch.save`` file ``{"state_dict": ..., "fusionseg_source": str(src)}``.
        model: the model the weights are for (``pretrained`` left unset). The converted
            weights are loaded into it strictly (so a mismatch is reported now, not at
            evaluation) and its own state dict is written.
        segmentor: without ``model``, the segmentor class whose released format ``src`` is
            in (its ``checkpoint_filter_fn`` renames the keys without a model). Without either,
            the registered segmentor classes are asked in turn (``is_released_format``) and the
            keys are kept when none recognises the file.

    Returns:
        ``Path(dst)``.

    Raises:
        FileNotFoundError, ValueError, CheckpointMismatchError: unreadable source, or weights
            that do not fit ``model``.
    """
    src = Path(src)
    sd = load_state_dict_file(src)
    if model is not None:
        load_state_dict_strict(model, to_model_keys(sd, model), src)
        out = model.state_dict()
    else:
        cls = segmentor
        if cls is None:
            cls = _detect_segmentor(to_model_keys(sd, None))
        out = to_model_keys(sd, None, segmentor=cls)
    return save_state_dict(out, dst, {"fusionseg_source": str(src)})
