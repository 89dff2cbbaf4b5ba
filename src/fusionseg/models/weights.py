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
  itself and returns our backbone name and constructor overrides
  (:class:`~fusionseg.models.backbones.formats.DetectedBackbone`):
  :func:`backbone_from_hf_config` reads a folder's ``config.json``,
  :func:`backbone_from_state_dict` infers depths and widths from key names and shapes. Both
  only ask the backbone families in turn: each backbone file registers what it recognises
  (:mod:`fusionseg.models.backbones.formats`).

``path`` arguments also accept a Hugging Face model folder (``model.safetensors``,
``pytorch_model.bin`` or their sharded ``*.index.json``), and a bare name of the
pretrained-weight catalogue (:mod:`fusionseg.models.catalogue`, ``fusionseg weights list``) that
is not a file here, resolved to the fetched file in the weights directory.

All mismatches raise :class:`CheckpointMismatchError` (a
:class:`~fusionseg.errors.CheckpointError`) naming the file and
listing the missing, unexpected and shape-mismatched keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..files import atomic_path
from ..serialization import read_checkpoint

if TYPE_CHECKING:
    from .backbones.formats import DetectedBackbone

__all__ = [
    "CheckpointMismatchError",
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

    The file's state dict goes through the backbone class's
    ``checkpoint_filter_fn(state_dict, backbone)`` first (defined in the backbone's own file;
    for MiT: drop the ImageNet classifier ``head.weight`` / ``head.bias`` of the NVlabs
    ``mit_b*.pth`` files, strip ``module.`` / ``backbone.`` prefixes); then every key must
    match in name and shape.

    Raises:
        CheckpointError: see :func:`load_state_dict_file`.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches.
    """
    sd = load_state_dict_file(path)
    filter_fn = getattr(type(backbone), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        sd = filter_fn(sd, backbone)
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
# Each backbone file registers its family (``backbones/formats.py``: published settings, the
# state-dict layouts and Hugging Face ``model_type``s it recognises); these functions only ask
# every registered family in turn, at call time.
def backbone_from_hf_config(config: Mapping[str, Any]) -> DetectedBackbone:
    """Our backbone for a Hugging Face ``config.json`` (as a dict).

    ``model_type`` picks the family that declares it (e.g. ``segformer``: MiT, ``dinov2`` /
    ``dinov2_with_registers``: DINOv2, ``sam2`` / ``sam2_video`` / ``sam2_vision_model`` /
    ``sam2_hiera_det_model``: the Hiera trunk, ``sam`` / ``sam_vision_model``: SAM ViT); a
    model whose encoder sits in a sub-config (``vision_config``, ``backbone_config``) is
    followed there. Keys the file leaves out take the defaults of the ``transformers`` 5
    configuration class the family declares, and the family's ``recognise_hf_config`` maps the
    config to the closest published backbone plus overrides (the hub configs of the real
    models give the standard names without overrides).

    Raises:
        CheckpointError: a ``model_type`` no family declares (the message lists the supported
            ones), or settings the family's backbone cannot express.
    """
    from .backbones.formats import backbone_families

    families = backbone_families()
    nested = {k: v for f in families for k, v in f.hf_nested.items()}
    declared = {k: f for f in families for k in f.hf_configs}
    mtype = str(config.get("model_type", ""))
    while mtype in nested:
        key, sub_type = nested[mtype]
        config = dict(config.get(key) or {})
        mtype = str(config.get("model_type") or sub_type)
    family = declared.get(mtype)
    if family is None or family.recognise_hf_config is None:
        known = sorted(set(declared) | set(nested))
        raise CheckpointError(f"Hugging Face model_type {mtype!r} is not an encoder fusionseg has "
                              f"(supported: {', '.join(known)})")
    c = {**family.hf_configs[mtype], **{k: v for k, v in config.items() if v is not None}}
    return family.recognise_hf_config(mtype, c)


def backbone_from_state_dict(state_dict: Mapping[str, Tensor]) -> DetectedBackbone | None:
    """Our backbone for a pretrained-encoder state dict, from its key names and shapes.

    A DDP ``module.`` prefix carried by every key is stripped; then each registered family's
    ``recognise_state_dict`` is asked in turn (registration order). The built-in families
    recognise NVlabs ``mit_b*.pth`` and Hugging Face SegFormer files; official
    ``dinov2_vit*14[_reg4]_pretrain.pth`` and Hugging Face Dinov2; the trunk of an official
    ``sam2.1_hiera_*.pt``, of Hugging Face ``Sam2Model`` / ``Sam2VisionModel`` files or a bare
    trunk; official ``sam_vit_*.pth``, Hugging Face ``SamModel`` / ``SamVisionModel`` files or
    a bare encoder; torchvision ResNets. What the weights do not store (MiT and DINOv2 heads,
    a Hiera trunk's windows and global blocks) is taken from the published setting they match
    (see each backbone file's ``recognise_state_dict``).

    Returns:
        A :class:`~fusionseg.models.backbones.formats.DetectedBackbone`, or ``None`` when no
        family recognises the keys (e.g. a whole segmentation model).

    Raises:
        CheckpointError: a file of a family that our backbone cannot express (e.g. a Hiera trunk
            that is not one of ``sam2.1_hiera_{t,s,b+,l}``, a SwiGLU width our ViT-g does not
            build).
    """
    from .backbones.formats import backbone_families

    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = _strip_prefix(sd, "module.")
    for family in backbone_families():
        if family.recognise_state_dict is not None:
            found = family.recognise_state_dict(sd)
            if found is not None:
                return found
    return None


def detect_backbone(src: str | Path) -> DetectedBackbone | None:
    """Recognise a pretrained-encoder file or Hugging Face model folder by itself.

    * a folder with ``config.json`` (``save_pretrained`` output, a hub snapshot), or a weight
      file next to one (``model.safetensors`` / ``pytorch_model.bin`` / a shard): read by
      :func:`backbone_from_hf_config`;
    * any other file, or a folder without ``config.json``: its state dict by
      :func:`backbone_from_state_dict`.

    Returns:
        A :class:`~fusionseg.models.backbones.formats.DetectedBackbone`, or ``None`` for a state
        dict that is no encoder format we know (e.g. a whole-model checkpoint).

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
