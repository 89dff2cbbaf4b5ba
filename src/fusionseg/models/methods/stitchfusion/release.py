"""The authors' released StitchFusion checkpoints: their key layout -> ours.

Source: the official code, GitHub ``LiBingyu01/StitchFusion``: ``semseg/models/stitchfusion.py``
(model: ``backbone`` + ``decode_head``) and ``semseg/models/backbones/stitchfusion.py`` (the MiT
encoder with the adapters of every block and ``feature_cross``). Their released ``.pth`` files
are plain state dicts in those names (or ``*_checkpoint.pth`` training files with
``model_state_dict``, unwrapped by :func:`fusionseg.models.load_checkpoint`).

Keys (ours <- release)::

    backbone.{patch_embed*, block*, norm*}.*        == release (official MiT names)
    adapters.block{i}.{j}.{adap_t_att{a}{b}, adap_t_mlp{a}{b}, adap_t, adap2_t}.adapter_*
        <- release backbone.block{i}.{j}.<same>.*
    fusion.{s}.{proj, mix_ffn.*, channel_attn.fc.*}
        <- release backbone.feature_cross.{liner_fusion_layers, mix_ffn, channel_attns}.{s}.*
    decode_head.*                                    == release

:func:`checkpoint_filter_fn` (bound on
:class:`~fusionseg.models.methods.stitchfusion.model.StitchFusionSegmentor`, so
``load_checkpoint`` applies it to StitchFusion models only) renames those keys and fits the
result to the model's variant; :func:`is_released_format` recognises the layout (``fusionseg
weights convert`` without a config).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

from torch import Tensor, nn

from ...weights import rename_keys

__all__ = ["checkpoint_filter_fn", "is_released_format", "release_to_fusionseg"]

_RELEASE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^backbone\.block(\d)\.(\d+)\.(adap_t|adap2_t|adap_t_(?:att|mlp)\d\d)\.(.+)$"),
        r"adapters.block\1.\2.\3.\4",
    ),
    (
        re.compile(r"^backbone\.feature_cross\.liner_fusion_layers\.(\d)\.(.+)$"),
        r"fusion.\1.proj.\2",
    ),
    (re.compile(r"^backbone\.feature_cross\.mix_ffn\.(\d)\.(.+)$"), r"fusion.\1.mix_ffn.\2"),
    (
        re.compile(r"^backbone\.feature_cross\.channel_attns\.(\d)\.(.+)$"),
        r"fusion.\1.channel_attn.\2",
    ),
)
#: a key only the released layout has (adapters or FeatureCross under ``backbone.``)
_RELEASE_MARK = re.compile(r"^backbone\.(feature_cross\.|block\d\.\d+\.adap)")

#: with two streams the shared adapter and the single pairwise adapter are one function
_SHARED_TO_PAIR = {"adap_t": "adap_t_att12", "adap2_t": "adap_t_mlp12"}
_PAIR_TO_SHARED = {v: k for k, v in _SHARED_TO_PAIR.items()}
_ADAPTER_KEY = re.compile(r"^adapters\.block(\d)\.(\d+)\.(\w+?)\.(adapter_\w+\.\w+)$")


def is_released_format(state_dict: Mapping[str, Tensor]) -> bool:
    """True for the authors' key layout (adapters / FeatureCross under ``backbone.``)."""
    return any(_RELEASE_MARK.match(k) for k in state_dict)


def release_to_fusionseg(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of a released StitchFusion state dict to ours (model-independent).

    Adapters ``backbone.block{i}.{j}.adap*`` -> ``adapters.block{i}.{j}.adap*``; FeatureCross
    ``backbone.feature_cross.{liner_fusion_layers, mix_ffn, channel_attns}.{s}`` ->
    ``fusion.{s}.{proj, mix_ffn, channel_attn}``; every other key (MiT encoder, decode head)
    is already ours. Tensors are not copied.
    """
    return rename_keys(sd, _RELEASE_RULES)


def checkpoint_filter_fn(
    state_dict: Mapping[str, Tensor], model: nn.Module | None = None
) -> dict[str, Tensor]:
    """A released (or our own) StitchFusion state dict in ``model``'s keys.

    Released files are renamed (:func:`release_to_fusionseg`); then the keys are fitted to
    ``model``'s variant (:func:`_fit_to_model`: the unused FeatureCross dropped for sum fusion,
    shared / pairwise adapter names exchanged for two modalities). Idempotent: a model's own
    ``state_dict()`` comes back unchanged.

    Args:
        state_dict: ``{key: tensor}`` (Lightning / DDP prefixes already stripped).
        model: the StitchFusion segmentor being loaded; ``None`` (or another model): the
            renaming only.

    Returns:
        A new dict; the tensors are not copied.

    Warns:
        UserWarning: FeatureCross keys dropped for a ``fusion="sum"`` model.
    """
    sd = release_to_fusionseg(state_dict) if is_released_format(state_dict) else dict(
        state_dict
    )
    return _fit_to_model(sd, model)


def _fit_to_model(sd: Mapping[str, Tensor], model: nn.Module | None) -> dict[str, Tensor]:
    """Adjust a (renamed) StitchFusion state dict to ``model``'s variant.

    * Sum-fusion model, checkpoint with ``fusion.*`` (the unused FeatureCross the release
      builds in every variant): those keys are dropped, with a warning.
    * Two modalities: a shared adapter and the single pairwise adapter are the same function
      (the release's note on ``Block_shared``); ``adap_t``/``adap2_t`` and
      ``adap_t_att12``/``adap_t_mlp12`` are renamed to whichever the model's stage uses.

    A ``model`` that is not a StitchFusion segmentor keeps the keys.
    """
    from .model import StitchFusionSegmentor  # model.py imports this module

    out = dict(sd)
    if not isinstance(model, StitchFusionSegmentor):
        return out
    if model.fusion is None:
        dropped = [k for k in out if k.startswith("fusion.")]
        if dropped:
            warnings.warn(
                f"dropping {len(dropped)} FeatureCross keys (fusion.* / released "
                f"backbone.feature_cross.*): the released model builds FeatureCross but its "
                f"sum-fusion variants do not use it. If this checkpoint was trained with "
                f"FeatureCross, build the model with fusion='featurecross'.",
                stacklevel=3,
            )
            for k in dropped:
                del out[k]
    if len(model.modalities) == 2:
        for k in list(out):
            mt = _ADAPTER_KEY.match(k)
            if not mt:
                continue
            stage = int(mt.group(1)) - 1
            density = model.stage_adapters[stage]
            table = _PAIR_TO_SHARED if density == "shared" else _SHARED_TO_PAIR
            if density is not None and mt.group(3) in table:
                new = (
                    f"adapters.block{mt.group(1)}.{mt.group(2)}.{table[mt.group(3)]}.{mt.group(4)}"
                )
                out[new] = out.pop(k)
    return out
