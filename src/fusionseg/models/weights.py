"""Loading local checkpoints strictly, with clear errors.

* :func:`load_state_dict_file` reads ``.pth`` / ``.pt`` / ``.ckpt`` (``torch.load`` with
  ``weights_only=True`` on CPU) and ``.safetensors`` files, unwrapping a state dict nested under
  ``"state_dict"`` or ``"model"``.
* :func:`load_backbone_weights` loads an official backbone file (e.g. NVlabs SegFormer
  ``mit_b2.pth``) into a backbone. Keys named by the backbone's ``checkpoint_ignore_keys``
  (for MiT: exactly the ImageNet classifier ``head.weight`` / ``head.bias``) are dropped;
  everything else must match in name and shape.
* :func:`load_checkpoint` loads a whole-model checkpoint: a fusionseg / Lightning checkpoint
  (``{"state_dict": {"model.<key>": ...}, ...}``; the ``model.`` prefix is stripped and keys of
  the LightningModule outside ``model.`` are ignored) or a plain state dict of the model.

Third-party key formats (e.g. released checkpoints of a published method, Hugging Face
exports) plug in as *converters*: ``(detect_fn, convert_fn)`` pairs in :data:`CONVERTERS`
(register with :func:`register_converter`). :func:`load_checkpoint` applies, in order, every
converter whose ``detect_fn(state_dict, model)`` is true, before the strict load.

:func:`convert_checkpoint` writes such a file in our key names (``fusionseg weights convert``).

All mismatches raise :class:`CheckpointMismatchError` (a ``ValueError``) naming the file and
listing the missing, unexpected and shape-mismatched keys.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "CONVERTERS",
    "CheckpointMismatchError",
    "convert_checkpoint",
    "load_backbone_weights",
    "load_checkpoint",
    "load_state_dict_file",
    "load_state_dict_strict",
    "register_converter",
]

StateDict = dict[str, Tensor]
DetectFn = Callable[[StateDict, nn.Module], bool]
ConvertFn = Callable[[StateDict, nn.Module], StateDict]

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

    Keys listed in ``backbone.checkpoint_ignore_keys`` are dropped when the backbone has no such
    parameter: for :class:`~fusionseg.models.backbones.mit.MixVisionTransformer` these are
    exactly the ImageNet classifier ``head.weight`` and ``head.bias`` of the NVlabs
    ``mit_b*.pth`` files. Everything else is strict.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_state_dict_file`.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches.
    """
    sd = load_state_dict_file(path)
    own = backbone.state_dict()
    for key in getattr(backbone, "checkpoint_ignore_keys", ()):
        if key not in own:
            sd.pop(key, None)
    load_state_dict_strict(backbone, sd, path)
    return backbone


# --------------------------------------------------------------------------- converters
#: ``(detect_fn(state_dict, model) -> bool, convert_fn(state_dict, model) -> state_dict)``,
#: applied in order by :func:`load_checkpoint` before the strict load.
CONVERTERS: list[tuple[DetectFn, ConvertFn]] = []


def register_converter(detect: DetectFn, convert: ConvertFn) -> None:
    """Append a key-format converter used by :func:`load_checkpoint`.

    ``detect(state_dict, model)`` says whether the file is in the converter's format;
    ``convert(state_dict, model)`` returns the state dict in the model's own key names.
    Both must accept ``model=None`` (a model-free key renaming, used by
    :func:`convert_checkpoint` without a config).
    """
    CONVERTERS.append((detect, convert))


def _strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_ddp_wrapped(sd: StateDict, model: nn.Module | None) -> bool:
    own = model.state_dict() if model is not None else {}
    return all(k.startswith("module.") for k in sd) and not any(k.startswith("module.") for k in own)


register_converter(_is_ddp_wrapped, lambda sd, model: _strip_prefix(sd, "module."))


def _to_model_keys(sd: StateDict, model: nn.Module | None) -> StateDict:
    """Strip a LightningModule ``model.`` prefix and apply the registered converters."""
    own_keys = model.state_dict().keys() if model is not None else ()
    if any(k.startswith("model.") for k in sd) and not any(
        k.startswith("model.") for k in own_keys
    ):
        sd = _strip_prefix(sd, "model.")
    for detect, convert in CONVERTERS:
        if detect(sd, model):
            sd = convert(sd, model)
    return sd


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a whole-model checkpoint into ``model`` (in place, strict) and return it.

    Accepted files:
      * fusionseg / Lightning checkpoints ``{"state_dict": {...}, ...}`` whose model keys carry
        the ``model.`` prefix of the LightningModule attribute: only ``model.*`` keys are used,
        with the prefix stripped (other LightningModule entries, e.g. loss buffers, are
        ignored);
      * a plain state dict of the model (``.pth`` / ``.pt`` / ``.safetensors``, or nested
        under ``"state_dict"`` / ``"model"`` without the prefix);
      * any format a registered converter (:data:`CONVERTERS`) recognises (DDP ``module.``
        prefix built in; the StitchFusion authors' released files, registered by
        :mod:`fusionseg.models.segmentors.stitchfusion`).

    Raises:
        FileNotFoundError, ValueError: see :func:`load_state_dict_file`.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches.
    """
    sd = _to_model_keys(load_state_dict_file(path), model)
    load_state_dict_strict(model, sd, path)
    return model


def convert_checkpoint(
    src: str | Path, dst: str | Path, config: str | Path | None = None
) -> Path:
    """Convert a checkpoint in a third-party format (e.g. a released StitchFusion ``.pth``)
    to fusionseg's format: a state dict in our key names that :func:`load_checkpoint` reads.

    Args:
        src: the source file (any format :func:`load_checkpoint` accepts).
        dst: output path; ``.safetensors`` writes a safetensors file, anything else a
            ``torch.save`` file ``{"state_dict": ..., "fusionseg_source": str(src)}``.
        config: optional run config (YAML). With it, the configured model is built (with
            ``pretrained`` ignored; ``num_classes`` taken from the checkpoint's
            ``decode_head.linear_pred`` when the config leaves it unset), the weights are
            loaded into it strictly (so a mismatch is reported now, not at evaluation) and the
            model's own state dict is written. Without it, the registered converters rename
            the keys without a model (e.g. a released sum-fusion StitchFusion file keeps its
            unused FeatureCross as ``fusion.*``; loading drops it for sum models).

    Returns:
        ``Path(dst)``.

    Raises:
        FileNotFoundError, ValueError, CheckpointMismatchError: unreadable source, bad config,
            or weights that do not fit the configured model.
    """
    src, dst = Path(src), Path(dst)
    sd = load_state_dict_file(src)
    if config is None:
        out = _to_model_keys(sd, None)
    else:
        from ..config import load_config
        from .registry import create_model

        spec = load_config(config).model.to_dict()
        spec["pretrained"] = None  # every weight comes from the checkpoint
        if spec.get("num_classes") is None:
            pred = _to_model_keys(sd, None).get("decode_head.linear_pred.weight")
            if pred is None:
                raise ValueError(
                    f"{config}: model.num_classes is not set and {src} has no "
                    f"decode_head.linear_pred.weight to infer it from; set model.num_classes"
                )
            spec["num_classes"] = int(pred.shape[0])
        model = create_model(spec)
        load_state_dict_strict(model, _to_model_keys(sd, model), src)
        out = model.state_dict()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().clone() for k, v in out.items()}, str(dst),
                  metadata={"fusionseg_source": str(src)})
    else:
        torch.save({"state_dict": dict(out), "fusionseg_source": str(src)}, str(dst))
    return dst
