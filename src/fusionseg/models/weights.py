"""Reading checkpoint files and loading them strictly, with clear errors.

This module knows files and key matching, not formats: every official or released key format
is converted by the module it belongs to.

* :func:`load_state_dict_file` reads ``.pth`` / ``.pt`` / ``.ckpt`` (through
  :func:`fusionseg.serialization.read_checkpoint`: ``weights_only=True``, never code) and ``.safetensors`` files, unwrapping a state dict nested under
  ``"state_dict"``, ``"model"``, ``"model_state_dict"`` or ``"segmenter"``.
* :func:`load_backbone_weights` loads an official backbone file (e.g. NVlabs SegFormer
  ``mit_b2.pth``) into a backbone after the backbone's own ``checkpoint_filter_fn`` (see
  :mod:`fusionseg.models.backbones.base`) mapped it to our keys.
* :func:`load_checkpoint` loads a whole-model checkpoint: a fusionseg / Lightning checkpoint
  (``{"state_dict": {"model.<key>": ...}, ...}``; the ``model.`` prefix is stripped and keys of
  the LightningModule outside ``model.`` are ignored), a DDP-wrapped (``module.``) or plain
  state dict of the model, or a released format of the model's method, converted by the
  segmentor class's ``checkpoint_filter_fn`` (see
  :meth:`fusionseg.models.segmentor.Segmentor.checkpoint_filter_fn`) - for that model
  only.
* :func:`convert_checkpoint` writes a file in our key names (``fusionseg weights convert``).
* :func:`detect_backbone` recognises a pretrained-encoder file or Hugging Face model folder by
  itself (SegFormer / MiT, DINOv2, SAM 2.1 Hiera, SAM ViT, torchvision ResNet) and returns our
  backbone name and constructor overrides (:class:`DetectedBackbone`):
  :func:`backbone_from_hf_config` reads a folder's ``config.json``,
  :func:`backbone_from_state_dict` infers depths and widths from key names and shapes.

``path`` arguments also accept a Hugging Face model folder (``model.safetensors``,
``pytorch_model.bin`` or their sharded ``*.index.json``), and a bare name of the
pretrained-weight catalogue (:mod:`fusionseg.models.catalogue`, ``fusionseg weights list``) that
is not a file here, resolved to the fetched file in the weights directory.

All mismatches raise :class:`CheckpointMismatchError` (a
:class:`~fusionseg.errors.CheckpointError`) naming the file and
listing the missing, unexpected and shape-mismatched keys.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..files import atomic_path
from ..serialization import read_checkpoint

__all__ = [
    "CheckpointMismatchError",
    "DetectedBackbone",
    "backbone_from_hf_config",
    "backbone_from_state_dict",
    "convert_backbone_checkpoint",
    "convert_checkpoint",
    "detect_backbone",
    "hf_weight_files",
    "InitReport",
    "init_from_checkpoint",
    "load_backbone_weights",
    "load_checkpoint",
    "load_state_dict_file",
    "load_state_dict_strict",
    "read_weights_file",
    "rename_key",
    "rename_keys",
    "save_state_dict",
    "state_dict_from",
    "to_model_keys",
]

StateDict = dict[str, Tensor]

_MAX_LISTED = 10


class CheckpointMismatchError(CheckpointError):
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


def read_weights_file(path: str | Path) -> object:
    """What a weights file holds, read without running code: ``.safetensors`` through
    safetensors, any other file through :func:`fusionseg.serialization.read_checkpoint`
    (``torch.load(weights_only=True)``).

    Raises:
        CheckpointError: missing, unreadable or code-carrying file (message names it).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return read_checkpoint(path)


def _unwrap(obj: object) -> object:
    """Return the tensor mapping inside ``obj`` (``obj``, ``obj['state_dict']``, ``obj['model']``,
    ``obj['model_state_dict']`` - the training checkpoints of the DELIVER/StitchFusion code -,
    ``obj['segmenter']`` - the files of the AsymFusion / CEN / light-weight-refinenet ``Saver``,
    ``{'segmenter': state_dict, 'epoch_start': ..., 'best_val': ...}``)."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "segmenter"):
            inner = obj.get(key)
            if _is_state_dict(inner):
                return inner
    return obj


#: weight files of a Hugging Face model folder, in the order they are looked for
_HF_WEIGHT_NAMES = ("model.safetensors.index.json", "model.safetensors",
                    "pytorch_model.bin.index.json", "pytorch_model.bin")


def hf_weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a Hugging Face model folder (``save_pretrained`` output, a hub
    snapshot): the shards an ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``
    lists, else ``model.safetensors``, else ``pytorch_model.bin``.

    Raises:
        CheckpointError: none of them is in ``folder`` (message names the folder and the
            names looked for).
    """
    folder = Path(folder)
    for name in _HF_WEIGHT_NAMES:
        f = folder / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(f.read_text()).get("weight_map", {}).values()))
            return [folder / s for s in shards]
        return [f]
    raise CheckpointError(f"{folder}: no weights of a Hugging Face model folder in it (looked "
                            f"for {', '.join(_HF_WEIGHT_NAMES)})")


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read a state dict from a local file or Hugging Face model folder.

    Args:
        path: ``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin`` (read with ``torch.load(weights_only=True,
            map_location="cpu")``) or ``.safetensors``; a Hugging Face model folder (its
            :func:`hf_weight_files`, shards merged); or the bare name of a catalogue entry
            (``mit_b2``, ``sam_vit_b_01ec64.pth``, ...; see
            :func:`fusionseg.models.catalogue.resolve_pretrained`) when no such file exists.

    Returns:
        ``dict[str, Tensor]`` (CPU). A dict nested under ``"state_dict"`` (mmseg, Lightning) or
        ``"model"`` (DeiT-style files), ``"segmenter"`` (AsymFusion's Saver) or
        ``"model_state_dict"`` (DELIVER/StitchFusion training
        checkpoints) is unwrapped; keys are kept as stored.

    Raises:
        CheckpointError: ``path`` does not exist (message names it); a catalogue name not
            fetched yet (:class:`~fusionseg.models.catalogue.WeightsNotAvailableError`, naming
            the command and the place of the file); the file cannot be read safely (see
            :func:`fusionseg.serialization.read_checkpoint`: a file naming Python objects
            beyond tensors and plain containers is refused) or holds no ``str -> Tensor``
            mapping (message names the path).
    """
    path = Path(path).expanduser()
    if not path.exists():
        from .catalogue import find_pretrained, resolve_pretrained

        if find_pretrained(str(path)) is not None:
            path = resolve_pretrained(str(path))
    if path.is_dir():
        merged: StateDict = {}
        for shard in hf_weight_files(path):
            merged.update(load_state_dict_file(shard))
        return merged
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return state_dict_from(read_weights_file(path), path)


def state_dict_from(contents: object, path: str | Path) -> StateDict:
    """The state dict in what a weights file holds (``contents``; see
    :func:`load_state_dict_file` for the nestings unwrapped).

    Raises:
        CheckpointError: no ``str -> Tensor`` mapping in ``contents`` (message names ``path``).
    """
    sd = _unwrap(contents)
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
        raise CheckpointError(
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
        CheckpointError: see :func:`load_state_dict_file`.
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


def load_checkpoint(model: nn.Module, path: str | Path, contents: object = None) -> nn.Module:
    """Load a whole-model checkpoint into ``model`` (in place, strict) and return it.

    Accepted files:
      * fusionseg / Lightning checkpoints ``{"state_dict": {...}, ...}`` whose model keys carry
        the ``model.`` prefix of the LightningModule attribute: only ``model.*`` keys are used,
        with the prefix stripped (other LightningModule entries, e.g. loss buffers, are
        ignored);
      * a plain state dict of the model (``.pth`` / ``.pt`` / ``.safetensors``, or nested
        under ``"state_dict"`` / ``"model"`` / ``"model_state_dict"`` / ``"segmenter"``), DDP
        ``module.`` prefix
        allowed;
      * the released format of the model's own method, converted by
        ``type(model).checkpoint_filter_fn`` (e.g. the StitchFusion authors' files for a
        :class:`~fusionseg.models.methods.stitchfusion.model.StitchFusionSegmentor`).

    ``contents``: what :func:`read_weights_file` returned for ``path``, when the caller has
    read it already (``predict`` reads the metadata first); ``path`` then only names it.

    Raises:
        CheckpointError: see :func:`load_state_dict_file`.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches.
    """
    if contents is None:
        sd = load_state_dict_file(path)
    else:
        sd = state_dict_from(contents, path)
    sd = to_model_keys(sd, model)
    load_state_dict_strict(model, sd, path)
    return model


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did besides loading matching weights.

    Attributes:
        path: the checkpoint.
        checkpoint_classes: its class count ``K'`` (``None`` when it does not tell).
        reinitialised: ``(key, checkpoint shape, model shape)`` of the class-dependent
            parameters kept at the model's fresh initialisation (``K' != K``).
        new_keys: the model's optional keys the checkpoint lacks (see
            :meth:`~fusionseg.models.Segmentor.optional_init_keys`), kept at initialisation.
    """

    path: str
    checkpoint_classes: int | None = None
    reinitialised: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable lines for the run log (empty when every key matched)."""
        out = []
        if self.reinitialised:
            out.append(f"init_from {self.path}: {self.checkpoint_classes} classes in the "
                       f"checkpoint, re-initialised {len(self.reinitialised)} class-dependent "
                       f"tensor(s) {_head([k for k, _, _ in self.reinitialised])}")
        if self.new_keys:
            out.append(f"init_from {self.path}: {len(self.new_keys)} tensor(s) the checkpoint "
                       f"lacks start at their initialisation {_head(self.new_keys)}")
        return out


def _class_dim_only(ckpt: tuple, own: tuple, delta: int) -> bool:
    """Whether two shapes differ in exactly one dimension, by ``delta`` (model - checkpoint)."""
    if len(ckpt) != len(own) or delta == 0:
        return False
    diff = [(a, b) for a, b in zip(ckpt, own, strict=True) if a != b]
    return len(diff) == 1 and diff[0][1] - diff[0][0] == delta


def init_from_checkpoint(model: nn.Module, path: str | Path, contents: object = None
                         ) -> InitReport:
    """Initialise ``model`` from a trained model's checkpoint (``train.init_from``), in place.

    Reads ``path`` like :func:`load_checkpoint` (fusionseg / Lightning checkpoints, plain
    state dicts, the method's released format; weights only, never code) and loads it
    strictly, with two exceptions that are reported, never silent:

    * the checkpoint has another class count ``K'`` (``fusionseg_classes`` of a fusionseg
      checkpoint, else the segmentor's :meth:`~fusionseg.models.Segmentor.infer_num_classes`):
      tensors whose shape differs from the model's in one dimension by exactly ``K - K'`` (the
      classifier of the decode and auxiliary heads) keep the model's fresh initialisation;
    * keys the model declares optional (:meth:`~fusionseg.models.Segmentor.optional_init_keys`:
      a zero-initialised gate, training-only heads) may be absent.

    Returns:
        :class:`InitReport`.

    Raises:
        CheckpointError: unreadable or unsafe file (see :func:`load_state_dict_file`).
        CheckpointMismatchError: any other missing, unexpected or mis-shaped key; nothing is
            loaded then.
    """
    if contents is None:
        contents = read_weights_file(path)
    sd = to_model_keys(state_dict_from(contents, path), model)
    own = model.state_dict()
    k_model = getattr(model, "num_classes", None)
    k_ckpt = None
    if isinstance(contents, Mapping) and isinstance(contents.get("fusionseg_classes"), list):
        k_ckpt = len(contents["fusionseg_classes"])
    elif hasattr(type(model), "infer_num_classes"):
        k_ckpt = type(model).infer_num_classes(sd)
    delta = (k_model - k_ckpt) if (k_model is not None and k_ckpt is not None) else 0
    optional = tuple(model.optional_init_keys()) if hasattr(model, "optional_init_keys") else ()
    report = InitReport(str(path), k_ckpt)
    missing, mismatched = [], []
    for k in own:
        if k not in sd:
            (report.new_keys if optional and k.startswith(optional) else missing).append(k)
    for k, v in sd.items():
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            item = (k, tuple(v.shape), tuple(own[k].shape))
            (report.reinitialised if _class_dim_only(item[1], item[2], delta)
             else mismatched).append(item)
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(path, missing, unexpected, mismatched)
    skip = {k for k, _, _ in report.reinitialised}
    merged = {k: (own[k] if k in skip or k not in sd else sd[k]) for k in own}
    model.load_state_dict(merged, strict=True)
    return report


def save_state_dict(sd: Mapping[str, Tensor], dst: str | Path,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``sd`` atomically (temporary file + fsync + rename): ``.safetensors`` as a
    safetensors file, anything else as ``torch.save({"state_dict": sd, **metadata})``.

    A crash while writing leaves an earlier ``dst`` untouched. Returns ``Path(dst)``.
    """
    dst = Path(dst)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(dst) as tmp:
        if dst.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(tmp),
                      metadata=meta)
        else:
            torch.save({"state_dict": dict(sd), **meta}, str(tmp))
    return dst


def convert_backbone_checkpoint(src: str | Path, dst: str | Path, backbone: nn.Module,
                                metadata: Mapping[str, str] | None = None) -> Path:
    """Convert a pretrained-encoder file or Hugging Face model folder (e.g. a
    ``facebook/dinov2-small`` ``model.safetensors``) to the official key names ``backbone``
    uses, through its ``checkpoint_filter_fn``; the result loads strictly (checked) and is
    written to ``dst`` with ``metadata`` (plus ``fusionseg_source``).

    Raises:
        CheckpointError (CheckpointMismatchError): unreadable source, or weights
            that do not fit ``backbone``.
    """
    load_backbone_weights(backbone, src)
    meta = {"fusionseg_source": str(src), **dict(metadata or {})}
    return save_state_dict(backbone.state_dict(), dst, meta)


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
        CheckpointError (CheckpointMismatchError): unreadable source, or weights
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


# --------------------------------------------------------------------------- format detection
@dataclass(frozen=True)
class DetectedBackbone:
    """What :func:`detect_backbone` found: build it with :meth:`build`.

    Attributes:
        name: our registered backbone name (``fusionseg info``), e.g. ``mit_b2``,
            ``dinov2_vitb14``, ``sam2.1_hiera_b+``, ``sam_vit_l``, ``resnet101``.
        overrides: constructor overrides of ``create_backbone(name, **overrides)``; empty for
            the published settings of ``name``. A non-standard architecture gets the closest
            standard name plus every setting that differs.
        family: ``"mit"``, ``"dinov2"``, ``"sam2_hiera"``, ``"sam_vit"`` or ``"resnet"``.
        origin: ``"config.json"`` (a Hugging Face folder's config) or ``"state dict"`` (key names
            and shapes).
        key_format: ``"hugging face"`` or ``"official"`` key names in the source.
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    origin: str = "state dict"
    key_format: str = "official"

    def build(self, **extra: Any) -> nn.Module:
        """``create_backbone(name, **overrides, **extra)`` (random weights)."""
        from .backbones import create_backbone

        return create_backbone(self.name, **{**self.overrides, **extra})

    def describe(self) -> str:
        """One line: name, overrides, and what it was read from."""
        over = "" if not self.overrides else " with " + ", ".join(
            f"{k}={_plain(v)}" for k, v in self.overrides.items())
        return f"{self.name}{over} ({self.key_format} keys, from the {self.origin})"

    def metadata(self) -> dict[str, str]:
        """``fusionseg_backbone`` and ``fusionseg_backbone_overrides`` (JSON) for the converted
        file's metadata."""
        return {"fusionseg_backbone": self.name,
                "fusionseg_backbone_overrides": json.dumps(
                    {k: _plain(v) for k, v in self.overrides.items()})}


def _plain(v: Any) -> Any:
    """Tuples -> lists (JSON and YAML friendly), recursively."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def _norm(v: Any) -> Any:
    """Comparable form of a setting: sequences -> tuples, whole floats kept as floats."""
    if isinstance(v, (tuple, list)):
        return tuple(_norm(x) for x in v)
    return v


def _family_settings(family: str) -> tuple[type, dict[str, dict]]:
    """The backbone class of ``family`` and its published settings ``{name: full kwargs}``
    (the registered builders' settings over the constructor defaults)."""
    from .backbones import dinov2, hiera, mit, resnet, sam_vit

    if family == "mit":
        cls, table = mit.MixVisionTransformer, dict(mit.MIT_SETTINGS)
    elif family == "dinov2":
        cls, table = dinov2.DinoVisionTransformer, dict(dinov2.DINOV2_SETTINGS)
    elif family == "sam2_hiera":
        cls, table = hiera.Hiera, dict(hiera.SAM21_HIERA_SETTINGS)
    elif family == "sam_vit":
        cls, table = sam_vit.SamVisionTransformer, dict(sam_vit.SAM_SETTINGS)
    elif family == "resnet":
        cls, table = resnet.ResNet, {n: {"layers": v} for n, v in resnet.RESNET_LAYERS.items()}
    else:  # pragma: no cover - internal
        raise KeyError(family)
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return cls, {n: {**defaults, **kw} for n, kw in table.items()}


def _match(family: str, found: Mapping[str, Any], key_format: str, origin: str,
           candidates: Sequence[str] | None = None) -> DetectedBackbone:
    """The published setting of ``family`` closest to ``found`` (fewest differing settings,
    first in registry order on ties) and the overrides that turn it into ``found``."""
    _, table = _family_settings(family)
    names = [n for n in table if candidates is None or n in candidates]
    found = {k: _norm(v) for k, v in found.items()}

    def diff(n: str) -> dict[str, Any]:
        return {k: v for k, v in found.items() if _norm(table[n].get(k)) != v}

    best = min(names, key=lambda n: len(diff(n)))
    overrides = diff(best)
    if family == "dinov2" and "depth" in overrides:
        taps = _norm(table[best]["out_indices"])
        if max(taps) >= overrides["depth"]:
            overrides["out_indices"] = _even_taps(overrides["depth"])
    return DetectedBackbone(best, overrides, family, origin, key_format)


def _even_taps(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` block indices spread evenly over ``depth`` blocks, the last one last (``depth=12``:
    ``(2, 5, 8, 11)``, the spec's ViT-S/B taps)."""
    if depth <= n:
        return tuple(range(depth))
    return tuple(round((k + 1) * depth / n) - 1 for k in range(n))


# Defaults of the transformers 5 configuration classes (``SegformerConfig``, ``Dinov2Config``,
# ``Dinov2WithRegistersConfig``, ``SamVisionConfig``, ``Sam2HieraDetConfig``), used for keys a
# ``config.json`` leaves out (older hub files store only the values that differ from them).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "segformer": dict(num_channels=3, num_encoder_blocks=4, depths=[2, 2, 2, 2],
                      sr_ratios=[8, 4, 2, 1], hidden_sizes=[32, 64, 160, 256],
                      patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                      num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4]),
    "dinov2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                   image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
                   use_swiglu_ffn=False),
    "dinov2_with_registers": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  mlp_ratio=4, image_size=224, patch_size=16, num_channels=3,
                                  qkv_bias=True, use_swiglu_ffn=False, num_register_tokens=4),
    "sam_vision_model": dict(hidden_size=768, output_channels=256, num_hidden_layers=12,
                             num_attention_heads=12, num_channels=3, image_size=1024,
                             patch_size=16, qkv_bias=True, mlp_ratio=4.0, use_abs_pos=True,
                             use_rel_pos=True, window_size=14, global_attn_indexes=[2, 5, 8, 11],
                             mlp_dim=None),
    "sam2_hiera_det_model": dict(hidden_size=96, num_attention_heads=1, num_channels=3,
                                 patch_kernel_size=[7, 7], patch_stride=[4, 4],
                                 patch_padding=[3, 3], query_stride=[2, 2],
                                 window_positional_embedding_background_size=[7, 7],
                                 num_query_pool_stages=3, blocks_per_stage=[1, 2, 7, 2],
                                 embed_dim_per_stage=[96, 192, 384, 768],
                                 num_attention_heads_per_stage=[1, 2, 4, 8],
                                 window_size_per_stage=[8, 4, 14, 7],
                                 global_attention_blocks=[5, 7, 9], mlp_ratio=4.0),
}
#: model types whose encoder sits in a sub-config: ``model_type -> (sub-config key, its type)``
_HF_NESTED = {"sam": ("vision_config", "sam_vision_model"),
              "sam2": ("vision_config", "sam2_vision_model"),
              "sam2_video": ("vision_config", "sam2_vision_model"),
              "sam2_vision_model": ("backbone_config", "sam2_hiera_det_model")}


def _as_pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(x) for x in v)


def backbone_from_hf_config(config: Mapping[str, Any]) -> DetectedBackbone:
    """Our backbone for a Hugging Face ``config.json`` (as a dict).

    ``model_type`` picks the family: ``segformer`` (MiT: ``hidden_sizes``, ``depths``,
    ``num_attention_heads``, ``sr_ratios``, ``mlp_ratios``), ``dinov2`` /
    ``dinov2_with_registers`` (``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``image_size``, ``patch_size``, ``use_swiglu_ffn``,
    ``num_register_tokens``), ``sam2`` / ``sam2_video`` / ``sam2_vision_model`` /
    ``sam2_hiera_det_model`` (the Hiera trunk of ``vision_config.backbone_config``:
    ``hidden_size``, ``num_attention_heads``, ``blocks_per_stage``, ``window_size_per_stage``,
    ``global_attention_blocks``, ``window_positional_embedding_background_size``, ...), ``sam``
    / ``sam_vision_model`` (``vision_config``: ``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``global_attn_indexes``, ``window_size``, ``image_size``,
    ``mlp_dim``, ``output_channels``). Keys the file leaves out take the defaults of the
    ``transformers`` 5 configuration classes. The hub configs of ``nvidia/mit-b0..b5``,
    ``facebook/dinov2-{small,base,large,giant}``, ``facebook/dinov2-with-registers-*``,
    ``facebook/sam2.1-hiera-{tiny,small,base-plus,large}`` and ``facebook/sam-vit-{base,large,
    huge}`` give the standard names (``mit_b0``, ``dinov2_vits14``, ``sam2.1_hiera_b+``,
    ``sam_vit_h``, ...) without overrides.

    Raises:
        CheckpointError: an unsupported ``model_type``, or settings our backbone cannot express
            (other patch sizes or strides of SegFormer, per-stage MLP ratios that differ, Hiera
            widths or heads that do not double per stage, no qkv bias, ...).
    """
    mtype = str(config.get("model_type", ""))
    while mtype in _HF_NESTED:
        key, sub_type = _HF_NESTED[mtype]
        config = dict(config.get(key) or {})
        mtype = str(config.get("model_type") or sub_type)
    if mtype not in _HF_DEFAULTS:
        known = sorted(set(_HF_DEFAULTS) | set(_HF_NESTED))
        raise CheckpointError(f"Hugging Face model_type {mtype!r} is not an encoder fusionseg has "
                         f"(supported: {', '.join(known)})")
    c = {**_HF_DEFAULTS[mtype], **{k: v for k, v in config.items() if v is not None}}
    if mtype == "segformer":
        if list(c["patch_sizes"]) != [7, 3, 3, 3] or list(c["strides"]) != [4, 2, 2, 2] or (
                int(c["num_encoder_blocks"]) != 4):
            raise CheckpointError("SegFormer config: MiT has 4 stages with patch sizes [7, 3, 3, 3] and "
                             f"strides [4, 2, 2, 2], got {c['patch_sizes']} / {c['strides']}")
        ratios = {float(r) for r in c["mlp_ratios"]}
        if len(ratios) != 1:
            raise CheckpointError(f"SegFormer config: one MLP ratio for all stages, got {c['mlp_ratios']}")
        found = dict(embed_dims=c["hidden_sizes"], depths=c["depths"],
                     num_heads=c["num_attention_heads"], sr_ratios=c["sr_ratios"],
                     mlp_ratio=ratios.pop(), in_chans=c["num_channels"])
        return _match("mit", found, "hugging face", "config.json")
    if mtype.startswith("dinov2"):
        if not c["qkv_bias"]:
            raise CheckpointError("DINOv2 config: qkv_bias false is not supported")
        img = _as_pair(c["image_size"])
        regs = int(c.get("num_register_tokens", 0)) if mtype == "dinov2_with_registers" else 0
        found = dict(embed_dim=c["hidden_size"], depth=c["num_hidden_layers"],
                     num_heads=c["num_attention_heads"], patch_size=c["patch_size"],
                     img_size=img[0], mlp_ratio=float(c["mlp_ratio"]),
                     ffn="swiglu" if c["use_swiglu_ffn"] else "mlp",
                     num_register_tokens=regs, in_chans=c["num_channels"])
        if img[0] != img[1]:
            raise CheckpointError(f"DINOv2 config: square image_size expected, got {c['image_size']}")
        _, table = _family_settings("dinov2")
        cands = [n for n in table if ("_reg4" in n) == bool(regs)]
        return _match("dinov2", found, "hugging face", "config.json", cands)
    if mtype == "sam2_hiera_det_model":
        dim, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        stages = [int(n) for n in c["blocks_per_stage"]]
        q_pool = int(c["num_query_pool_stages"])
        dims = [dim * 2**i for i in range(len(stages))]
        hds = [heads * 2**i for i in range(len(stages))]
        if [int(d) for d in c["embed_dim_per_stage"]] != dims or [
                int(h) for h in c["num_attention_heads_per_stage"]] != hds:
            raise CheckpointError("SAM 2 Hiera config: widths and heads must double per stage from "
                             f"hidden_size / num_attention_heads ({dims} / {hds}), got "
                             f"{c['embed_dim_per_stage']} / {c['num_attention_heads_per_stage']}")
        if (_as_pair(c["patch_kernel_size"]), _as_pair(c["patch_stride"]),
                _as_pair(c["patch_padding"])) != ((7, 7), (4, 4), (3, 3)):
            raise CheckpointError("SAM 2 Hiera config: the patch embedding must be 7x7, stride 4, "
                             "padding 3")
        found = dict(embed_dim=dim, num_heads=heads, stages=stages, q_pool=q_pool,
                     q_stride=_as_pair(c["query_stride"]), dim_mul=2.0, head_mul=2.0,
                     window_pos_embed_bkg_spatial_size=_as_pair(
                         c["window_positional_embedding_background_size"]),
                     window_spec=[int(w) for w in c["window_size_per_stage"]],
                     global_att_blocks=[int(b) for b in c["global_attention_blocks"]],
                     mlp_ratio=float(c["mlp_ratio"]), in_chans=c["num_channels"])
        return _match("sam2_hiera", found, "hugging face", "config.json")
    # sam_vision_model
    if not c["use_abs_pos"] or not c["qkv_bias"]:
        raise CheckpointError("SAM vision config: use_abs_pos and qkv_bias must be true")
    dim = int(c["hidden_size"])
    mlp_ratio = float(c["mlp_dim"]) / dim if c.get("mlp_dim") else float(c["mlp_ratio"])
    found = dict(embed_dim=dim, depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                 global_attn_indexes=[int(i) for i in c["global_attn_indexes"]],
                 window_size=c["window_size"], img_size=_as_pair(c["image_size"])[0],
                 patch_size=c["patch_size"], mlp_ratio=mlp_ratio,
                 out_chans=c["output_channels"], use_rel_pos=bool(c["use_rel_pos"]),
                 in_chans=c["num_channels"])
    return _match("sam_vit", found, "hugging face", "config.json")


# ------------------------------------------------------------- state-dict inference
def _under(sd: Mapping[str, Tensor], prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _top(sd: Mapping[str, Tensor]) -> set[str]:
    return {k.split(".", 1)[0] for k in sd}


def _count(sd: Mapping[str, Tensor], pattern: str) -> int:
    """Number of distinct first groups of ``pattern`` among the keys (e.g. block indices)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _official_encoder(sd: Mapping[str, Tensor]) -> tuple[str, str, StateDict] | None:
    """``(family, key format, encoder state dict in official names)`` for a pretrained-encoder
    file, or ``None``. Conservative: whole segmentation models (``backbone.*`` with a head) are
    not taken for encoders."""
    from .backbones.dinov2 import convert_hf_dinov2
    from .backbones.hiera import convert_hf_sam2_trunk
    from .backbones.mit import convert_hf_segformer, is_hf_segformer
    from .backbones.sam_vit import convert_hf_sam_vision

    top = _top(sd)
    # SegFormer / MiT
    if is_hf_segformer(sd) and top <= {"segformer", "encoder", "stages", "classifier",
                                       "decode_head"}:
        return "mit", "hugging face", convert_hf_segformer(sd)
    if "patch_embed1.proj.weight" in sd and "block1.0.attn.q.weight" in sd:
        return "mit", "official", {k: v for k, v in sd.items() if not k.startswith("head.")}
    # DINOv2
    # (Dinov2ForImageClassification: dinov2.* and a classifier.*)
    d = _under(sd, "dinov2.") if "dinov2" in top and top <= {"dinov2", "classifier"} else dict(sd)
    if "embeddings.cls_token" in d and any(k.startswith("encoder.layer.") for k in d):
        out = convert_hf_dinov2(d)
        return "dinov2", "hugging face", out
    if "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd and "blocks.0.ls1.gamma" in sd:
        return "dinov2", "official", {k: v for k, v in sd.items() if not k.startswith("head.")}
    # SAM 2 Hiera trunk: official whole model, HF Sam2Model / Sam2VisionModel, bare trunks
    for prefix, others in (("image_encoder.trunk.", None), ("vision_encoder.backbone.", None),
                           ("backbone.", {"neck"}), ("trunk.", {"neck"}), ("", set())):
        if f"{prefix}pos_embed_window" not in sd:
            continue
        if prefix and others is not None and not (top - {prefix.split(".")[0]}) <= others:
            continue  # e.g. a segmentor's backbone.* next to its head: not an encoder file
        t = _under(sd, prefix)
        hf = any(".layer_norm1." in k or k.startswith("patch_embed.projection.") for k in t)
        return "sam2_hiera", "hugging face" if hf else "official", (
            convert_hf_sam2_trunk(t) if hf else t)
    # SAM ViT: official whole SAM, HF SamModel, bare encoders
    if "image_encoder.blocks.0.mlp.lin1.weight" in sd and top <= {
            "image_encoder", "prompt_encoder", "mask_decoder"}:
        return "sam_vit", "official", _under(sd, "image_encoder.")
    if "vision_encoder.layers.0.mlp.lin1.weight" in sd and top <= {
            "vision_encoder", "prompt_encoder", "mask_decoder", "shared_image_embedding"}:
        return "sam_vit", "hugging face", convert_hf_sam_vision(_under(sd, "vision_encoder."))
    if "layers.0.mlp.lin1.weight" in sd and "patch_embed.projection.weight" in sd:
        return "sam_vit", "hugging face", convert_hf_sam_vision(sd)
    if "blocks.0.mlp.lin1.weight" in sd and "patch_embed.proj.weight" in sd:
        return "sam_vit", "official", dict(sd)
    # torchvision ResNet
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd and "bn1.running_mean" in sd:
        return "resnet", "official", {k: v for k, v in sd.items() if not k.startswith("fc.")}
    return None


def _divisor_heads(dim: int, want: int) -> int:
    """The largest head count ``<= want`` (at least 1) that divides ``dim``."""
    h = max(1, want)
    while dim % h:
        h -= 1
    return h


def backbone_from_state_dict(state_dict: Mapping[str, Tensor]) -> DetectedBackbone | None:
    """Our backbone for a pretrained-encoder state dict, from its key names and shapes.

    Recognised (a DDP ``module.`` prefix allowed): NVlabs ``mit_b*.pth`` and Hugging Face
    SegFormer files; official ``dinov2_vit*14[_reg4]_pretrain.pth`` and Hugging Face Dinov2;
    the trunk of an official ``sam2.1_hiera_*.pt`` (``image_encoder.trunk.*``), of Hugging Face
    ``Sam2Model`` / ``Sam2VisionModel`` files or a bare trunk; official ``sam_vit_*.pth``,
    Hugging Face ``SamModel`` / ``SamVisionModel`` files or a bare encoder; torchvision
    ResNets. Read from the weights: depths, widths, spatial-reduction ratios and MLP ratios
    (MiT); depth, width, patch size, pretraining grid, FFN type, registers (DINOv2); depth,
    width, heads (from the relative-position tables), window size, global blocks, grid, neck
    width (SAM); stages, width, background grid (Hiera); blocks per stage and width (ResNet).

    What the weights do not store is taken from the published setting they match: MiT heads
    (for other widths, ``C // 32`` as MiT-B0), DINOv2 heads (``C // 64``, as all four models),
    and everything of a Hiera trunk beyond its stages and widths (window sizes, global
    blocks, heads) - a Hiera trunk that matches no published setting raises.

    Returns:
        A :class:`DetectedBackbone`, or ``None`` when the keys are none of these formats.

    Raises:
        CheckpointError: a Hiera trunk that is not one of ``sam2.1_hiera_{t,s,b+,l}``, or an
            inconsistent file (e.g. a SwiGLU width our ViT-g does not build).
    """
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = _under(sd, "module.")
    got = _official_encoder(sd)
    if got is None:
        return None
    family, fmt, enc = got
    if family == "mit":
        dims = [int(enc[f"patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5)]
        depths = [_count(enc, rf"^block{i}\.(\d+)\.norm1\.weight$") for i in range(1, 5)]
        srs = [int(enc[f"block{i}.0.attn.sr.weight"].shape[-1])
               if f"block{i}.0.attn.sr.weight" in enc else 1 for i in range(1, 5)]
        mlp = enc["block1.0.mlp.fc1.weight"].shape[0] / dims[0]
        _, table = _family_settings("mit")
        std = next((kw["num_heads"] for kw in table.values() if list(kw["embed_dims"]) == dims),
                   None)
        heads = list(std) if std is not None else [_divisor_heads(c, c // 32) for c in dims]
        found = dict(embed_dims=dims, depths=depths, num_heads=heads, sr_ratios=srs,
                     mlp_ratio=float(mlp), in_chans=int(enc["patch_embed1.proj.weight"].shape[1]))
        return _match("mit", found, fmt, "state dict")
    if family == "dinov2":
        w = enc["patch_embed.proj.weight"]
        dim, patch = int(w.shape[0]), int(w.shape[-1])
        grid = math.isqrt(int(enc["pos_embed"].shape[1]) - 1)
        regs = int(enc["register_tokens"].shape[1]) if "register_tokens" in enc else 0
        swiglu = "blocks.0.mlp.w12.weight" in enc
        mlp = 4.0 if swiglu else enc["blocks.0.mlp.fc1.weight"].shape[0] / dim
        if swiglu:
            hidden = (int(int(dim * 4.0) * 2 / 3) + 7) // 8 * 8
            if int(enc["blocks.0.mlp.w3.weight"].shape[1]) != hidden:
                raise CheckpointError(f"DINOv2 SwiGLU width {enc['blocks.0.mlp.w3.weight'].shape[1]} "
                                 f"is not the ViT-g rule's {hidden} for width {dim}")
        found = dict(embed_dim=dim, depth=_count(enc, r"^blocks\.(\d+)\.norm1\.weight$"),
                     num_heads=_divisor_heads(dim, dim // 64), patch_size=patch,
                     img_size=grid * patch, mlp_ratio=float(mlp),
                     ffn="swiglu" if swiglu else "mlp", num_register_tokens=regs,
                     in_chans=int(w.shape[1]))
        _, table = _family_settings("dinov2")
        cands = [n for n in table if ("_reg4" in n) == bool(regs)]
        return _match("dinov2", found, fmt, "state dict", cands)
    if family == "sam_vit":
        w = enc["patch_embed.proj.weight"]
        dim, patch = int(w.shape[0]), int(w.shape[-1])
        grid = int(enc["pos_embed"].shape[1])
        depth = _count(enc, r"^blocks\.(\d+)\.norm1\.weight$")
        rel = [enc.get(f"blocks.{i}.attn.rel_pos_h") for i in range(depth)]
        use_rel = rel[0] is not None
        glob = [i for i, r in enumerate(rel) if r is not None and r.shape[0] == 2 * grid - 1]
        local = [r for r in rel if r is not None and r.shape[0] != 2 * grid - 1]
        window = (int(local[0].shape[0]) + 1) // 2 if local else 14
        heads = dim // int(rel[0].shape[1]) if use_rel else _divisor_heads(dim, dim // 64)
        found = dict(embed_dim=dim, depth=depth, num_heads=heads, global_attn_indexes=glob,
                     window_size=window, img_size=grid * patch, patch_size=patch,
                     mlp_ratio=enc["blocks.0.mlp.lin1.weight"].shape[0] / dim,
                     use_rel_pos=use_rel, in_chans=int(w.shape[1]))
        if "neck.0.weight" in enc:
            found["out_chans"] = int(enc["neck.0.weight"].shape[0])
        else:
            found["neck"] = False
        return _match("sam_vit", found, fmt, "state dict")
    if family == "sam2_hiera":
        dim = int(enc["patch_embed.proj.weight"].shape[0])
        depth = _count(enc, r"^blocks\.(\d+)\.norm1\.weight$")
        starts = [0] + [i for i in range(depth) if f"blocks.{i}.proj.weight" in enc]
        stages = [b - a for a, b in zip(starts, starts[1:] + [depth], strict=True)]
        bkg = tuple(int(s) for s in enc["pos_embed"].shape[-2:])
        win0 = int(enc["pos_embed_window"].shape[-1])
        mlp = enc["blocks.0.mlp.layers.0.weight"].shape[0] / dim
        _, table = _family_settings("sam2_hiera")
        for name, kw in table.items():
            if (kw["embed_dim"], list(kw["stages"]), tuple(kw["window_pos_embed_bkg_spatial_size"]),
                    int(kw["window_spec"][0]), float(kw["mlp_ratio"])) == (
                    dim, stages, bkg, win0, float(mlp)):
                return DetectedBackbone(name, {}, family, "state dict", fmt)
        raise CheckpointError(f"a SAM 2 Hiera trunk of width {dim}, stages {stages}, background grid "
                         f"{list(bkg)} is none of {', '.join(table)}; its window sizes, global-"
                         "attention blocks and heads are not stored in the weights: convert its "
                         "Hugging Face folder (config.json) or pass --backbone")
    # resnet
    layers = [_count(enc, rf"^layer{i}\.(\d+)\.conv1\.weight$") for i in range(1, 5)]
    w = enc["conv1.weight"]
    found = dict(layers=layers, width=int(w.shape[0]), in_chans=int(w.shape[1]))
    return _match("resnet", found, fmt, "state dict")


def detect_backbone(src: str | Path) -> DetectedBackbone | None:
    """Recognise a pretrained-encoder file or Hugging Face model folder by itself.

    * a folder with ``config.json`` (``save_pretrained`` output, a hub snapshot), or a weight
      file next to one (``model.safetensors`` / ``pytorch_model.bin`` / a shard): read by
      :func:`backbone_from_hf_config`;
    * any other file, or a folder without ``config.json``: its state dict by
      :func:`backbone_from_state_dict`.

    Returns:
        A :class:`DetectedBackbone`, or ``None`` for a state dict that is no encoder format we
        know (e.g. a whole-model checkpoint).

    Raises:
        CheckpointError: unreadable source, unsupported ``model_type``, or
            settings our backbones cannot express.
    """
    src = Path(src).expanduser()
    cfg = None
    if src.is_dir() and (src / "config.json").is_file():
        cfg = src / "config.json"
    elif src.is_file() and (src.parent / "config.json").is_file() and (
            src.name in _HF_WEIGHT_NAMES or re.match(r"^(model|pytorch_model)-\d+-of-\d+\.",
                                                     src.name)):
        cfg = src.parent / "config.json"
    if cfg is not None:
        try:
            config = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None
        return backbone_from_hf_config(config)
    return backbone_from_state_dict(load_state_dict_file(src))
