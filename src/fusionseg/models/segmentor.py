"""Segmentor base class, the batch convention and the training-time output type.

Batch convention (see docs / architecture spec, "The Sample convention"):

* a batch is a ``dict``; each present modality name maps to a float tensor ``[B, C, H, W]``;
* a missing modality is an absent key;
* when samples of one batch miss different modalities, the batch carries
  ``"present": bool[B, M]`` whose columns follow the model's ``modalities`` list, and the
  missing samples' tensors are zeros;
* ``"label"`` (int64 ``[B, H, W]``), ``"meta"`` (list of dicts) and keys of modalities the
  model does not use are ignored by the model.

Training output and the route for method losses: in training a segmentor may return a
:class:`SegmentationOutput` instead of the logits. The engine then minimises::

    loss = L(logits, label)                                        # the configured loss
         + sum_a aux[a].weight * L_a(aux[a].logits, aux[a].target or label)
         + sum_t losses[t]                                         # weighted extra terms

and logs every term by name (``train/loss_<name>``). ``L_a`` is the configured loss unless the
auxiliary output names its own (``AuxiliaryLogits.loss``, a loss spec such as ``{"name":
"ce"}``). Methods put their own supervision here (auxiliary heads, per-stream logits, hard-pixel
targets, distillation terms) and the engine needs no special case for any method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError, DataError
from .backbones.base import Backbone
from .peft.base import PeftModule

__all__ = [
    "DEFAULT_AUX_WEIGHT",
    "AuxiliaryLogits",
    "ModalityInput",
    "SegmentationOutput",
    "Segmentor",
    "StreamBatch",
    "count_parameters",
    "logits_of",
]

#: ``(modality name, image [B, 3, H, W], present mask bool[B] or None = all present)``
ModalityInput = tuple[str, Tensor, Tensor | None]

#: weight of auxiliary logits given as a bare tensor (the mmseg / SegFormer convention)
DEFAULT_AUX_WEIGHT = 0.4


@dataclass
class AuxiliaryLogits:
    """One auxiliary output of a method, supervised in training only.

    Attributes:
        logits: ``[B, K, H', W']`` (the loss resizes them to the label bilinearly).
        weight: factor of its loss term in the total loss.
        loss: a loss spec (``{"name": "ce", ...}``, see :func:`fusionseg.engine.losses.build_loss`)
            for this term; ``None`` = the run's configured loss.
        target: labels ``int64 [B, H, W]`` to use instead of the batch's (e.g. MoBaNet's
            hard-pixel labels, 255 where the main prediction is right); ``None`` = the label.
        sample_mask: ``bool[B]``: only these samples count (the others' labels are taken as
            ``ignore_index``; e.g. a per-modality output on the samples where that modality is
            present); ``None`` = all.
    """

    logits: Tensor
    weight: float = DEFAULT_AUX_WEIGHT
    loss: Mapping[str, Any] | None = None
    target: Tensor | None = None
    sample_mask: Tensor | None = None

    def select(self, index: slice) -> AuxiliaryLogits:
        """The same output for the samples ``index`` (a slice of the batch)."""
        return AuxiliaryLogits(
            self.logits[index], self.weight, self.loss,
            None if self.target is None else self.target[index],
            None if self.sample_mask is None else self.sample_mask[index])


@dataclass
class SegmentationOutput:
    """Training-time output of a segmentor (see the module docstring for the loss it defines).

    Attributes:
        logits: main logits ``[B, K, H, W]`` at input size (what inference returns).
        aux: named auxiliary outputs; a bare tensor is taken as
            ``AuxiliaryLogits(tensor, DEFAULT_AUX_WEIGHT)``.
        losses: named extra loss terms, scalar tensors already weighted by the method (added to
            the total as they are).
    """

    logits: Tensor
    aux: dict[str, AuxiliaryLogits] = field(default_factory=dict)
    losses: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.aux = {
            k: v if isinstance(v, AuxiliaryLogits) else AuxiliaryLogits(v)
            for k, v in self.aux.items()
        }


def logits_of(output: Tensor | SegmentationOutput) -> Tensor:
    """The main logits of a model output (a Tensor or a :class:`SegmentationOutput`)."""
    return output if isinstance(output, Tensor) else output.logits


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": all parameters, "trainable": those with requires_grad}`` (shared parameters
    counted once)."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


@dataclass
class StreamBatch:
    """The model's modalities as streams, in model order (see :meth:`Segmentor.stream_inputs`).

    Attributes:
        names: the model's modality names (``M``).
        images: ``M`` tensors ``[B, 3, H, W]``; an absent modality, and a sample whose
            ``present`` entry is false, is zeros.
        present: ``bool[B, M]``, true where the sample has the modality.
    """

    names: list[str]
    images: list[Tensor]
    present: Tensor

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return tuple(self.images[0].shape[-2:])

    def stacked(self) -> Tensor:
        """All streams as one batch ``[M * B, 3, H, W]``, stream-major."""
        return torch.cat(self.images, dim=0) if len(self.images) > 1 else self.images[0]


def keep_keys(state_dict: Mapping[str, Tensor], model: nn.Module | None = None
              ) -> dict[str, Tensor]:
    """The default ``checkpoint_filter_fn`` of a segmentor: the keys as they are.

    A method's own filter maps its released whole-model state dict to our keys;
    :func:`fusionseg.models.load_checkpoint` calls it for models of that class only, after
    stripping Lightning (``model.``) and DDP (``module.``) prefixes. ``model`` is the instance
    being loaded (``None`` when converting without a model: then only the model-independent
    renaming applies). Every filter is idempotent: our own ``state_dict()`` comes back
    unchanged.
    """
    return dict(state_dict)


def no_release(state_dict: Mapping[str, Tensor]) -> bool:
    """The default ``is_released_format``: no released format (used by ``fusionseg weights
    convert`` without a config to find the method of a file)."""
    return False


class Segmentor(nn.Module):
    """Base class of fusionseg segmentors.

    ``forward(batch: dict) -> Tensor[B, K, H, W]`` (logits at input size), or a
    :class:`SegmentationOutput` in training mode for models with auxiliary outputs or extra
    loss terms.

    Args:
        modalities: ordered modality names the model consumes (the order defines the columns
            of ``batch["present"]`` and the stream order of methods that need one).
        num_classes: ``K``.

    Subclasses set ``self.backbone`` (or override :meth:`backbone_modules` when they have more
    than one encoder) so that :meth:`freeze_backbone` and :meth:`param_groups` know which
    parameters are the backbone's. A method whose authors released weights in another key
    layout binds its ``release.checkpoint_filter_fn(state_dict, model=None)`` (and
    ``is_released_format(state_dict)``) as staticmethods: one signature for every format.
    """

    def __init__(self, modalities: Sequence[str], num_classes: int) -> None:
        super().__init__()
        if isinstance(modalities, str):
            modalities = [modalities]
        modalities = list(modalities)
        if not modalities:
            raise ConfigError("a segmentor needs at least one modality")
        dup = sorted({m for m in modalities if modalities.count(m) > 1})
        if dup:
            raise ConfigError(f"duplicate modalities {dup} in {modalities}")
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.modalities: list[str] = modalities
        self.num_classes = int(num_classes)
        self.backbone_frozen = False
        #: activation checkpointing requested (:meth:`set_grad_checkpointing`)
        self.grad_checkpointing = False

    # ------------------------------------------------------------------ parameters
    def param_counts(self) -> dict[str, int]:
        """``{"total": all parameters, "trainable": those with requires_grad}``."""
        return count_parameters(self)

    def backbone_modules(self) -> list[nn.Module]:
        """The pretrained encoder(s) (default: ``[self.backbone]``)."""
        bb = getattr(self, "backbone", None)
        return [bb] if isinstance(bb, nn.Module) else []

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of :meth:`backbone_modules`, without those of :class:`PeftModule`
        submodules a method injected into them (LoRA, adapters: the method's own)."""
        injected: set[int] = set()
        for m in self.backbone_modules():
            for sub in m.modules():
                if isinstance(sub, PeftModule):
                    injected.update(id(p) for p in sub.parameters())
        out: list[nn.Parameter] = []
        seen: set[int] = set()
        for m in self.backbone_modules():
            for p in m.parameters():
                if id(p) not in injected and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def no_weight_decay(self) -> set[str]:
        """Full parameter names (in this model) that get no weight decay besides the 1-D
        ones: the backbones' ``no_weight_decay()`` names, prefixed."""
        names: set[str] = set()
        prefixes = {id(m): n for n, m in self.named_modules()}
        for m in self.backbone_modules():
            nwd = getattr(m, "no_weight_decay", None)
            if nwd is None or id(m) not in prefixes:
                continue
            pre = prefixes[id(m)]
            names.update(f"{pre}.{n}" if pre else n for n in nwd())
        return names

    def param_groups(
        self, lr: float, weight_decay: float, head_lr_mult: float = 1.0
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups: (backbone | rest) x (decay | no decay).

        * backbone = :meth:`backbone_parameters` (pretrained weights, ``lr``); rest =
          everything else, including :class:`PeftModule` parameters injected into a backbone
          (``lr * head_lr_mult``);
        * no weight decay for 1-D parameters (biases, norm scales and shifts) and for the
          names of :meth:`no_weight_decay` (position embeddings, tokens);
        * frozen parameters are left out; empty groups are dropped;
        * a module with an ``lr_mult`` attribute (e.g. a presence gate, whose zero-initialised
          scores must move far in a short fine-tune) puts its parameters in a group of their
          own, ``"scaled_<lr_mult>"``, at ``lr * head_lr_mult * lr_mult`` without weight decay.

        Returns:
            ``[{"name": "backbone" | "backbone_no_decay" | "rest" | "rest_no_decay" |
            "scaled_<m>", "params": [...], "lr": ..., "weight_decay": ...}, ...]``.
        """
        bb = {id(p) for p in self.backbone_parameters()}
        nwd = self.no_weight_decay()
        scaled: dict[int, float] = {}
        for mod in self.modules():
            mult = getattr(mod, "lr_mult", None)
            if isinstance(mult, (int, float)) and not isinstance(mult, bool) and mult != 1:
                scaled.update({id(p): float(mult) for p in mod.parameters()})
        extra: dict[float, list[nn.Parameter]] = {}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) in scaled and id(p) not in bb:
                extra.setdefault(scaled[id(p)], []).append(p)
                continue
            no_decay = p.ndim <= 1 or name in nwd
            groups.setdefault((id(p) in bb, no_decay), []).append(p)
        out = []
        for is_bb, no_decay in ((True, False), (True, True), (False, False), (False, True)):
            params = groups.get((is_bb, no_decay))
            if not params:
                continue
            out.append({
                "name": ("backbone" if is_bb else "rest") + ("_no_decay" if no_decay else ""),
                "params": params,
                "lr": lr if is_bb else lr * head_lr_mult,
                "weight_decay": 0.0 if no_decay else weight_decay,
            })
        for mult, params in sorted(extra.items()):
            out.append({"name": f"scaled_{mult:g}", "params": params,
                        "lr": lr * head_lr_mult * mult, "weight_decay": 0.0})
        return out

    def freeze_backbone(self, freeze: bool = True) -> Segmentor:
        """Freeze (or unfreeze) the backbone weights.

        Frozen parameters (:meth:`backbone_parameters`: :class:`PeftModule` parameters injected
        into the backbone stay trainable) get ``requires_grad=False``, and every BatchNorm
        inside the frozen modules stays in eval mode (running statistics fixed) through later
        ``train()`` calls. Returns ``self``.

        Raises:
            ConfigError: the model has no backbone.
        """
        if freeze and not self.backbone_modules():
            raise ConfigError(f"{type(self).__name__} has no backbone to freeze")
        for p in self.backbone_parameters():
            p.requires_grad_(not freeze)
        self.backbone_frozen = freeze
        return self.train(self.training)

    def _frozen_batchnorms(self) -> Iterable[_BatchNorm]:
        seen: set[int] = set()
        if self.backbone_frozen:
            for m in self.backbone_modules():
                for bn in m.modules():
                    if isinstance(bn, _BatchNorm):
                        seen.add(id(bn))
                        yield bn
        for bn in self.modules():  # any BatchNorm whose affine parameters are all frozen
            if isinstance(bn, _BatchNorm) and id(bn) not in seen:
                params = list(bn.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    yield bn

    def train(self, mode: bool = True) -> Segmentor:
        """``nn.Module.train`` that keeps frozen BatchNorm layers in eval mode."""
        super().train(mode)
        if mode:
            for bn in self._frozen_batchnorms():
                bn.eval()
        return self

    # ------------------------------------------------------------------ memory
    def set_grad_checkpointing(self, enable: bool = True) -> Segmentor:
        """Activation checkpointing per backbone block (timm's method name); returns ``self``.

        Forwards to every :class:`~fusionseg.models.backbones.base.Backbone` inside the model
        (:meth:`~fusionseg.models.backbones.base.Backbone.set_grad_checkpointing`). Methods
        that run backbone blocks themselves (StitchFusion's MultiAdapters between the attention
        and MLP residuals, MoBaNet's per-block prompts, AsymFusion's fused bottlenecks) check
        the backbone's :attr:`~fusionseg.models.backbones.base.Backbone.grad_checkpointing_active`
        and checkpoint each block together with the modules they insert. Only active in
        training mode with gradients enabled; logits and gradients do not change. ``model:
        grad_checkpointing: true`` in a run config calls this (see
        :func:`fusionseg.models.create_model`).

        Raises:
            ConfigError: ``enable`` with no backbone in the model (nothing would be
                checkpointed).
        """
        backbones = [m for m in self.modules() if isinstance(m, Backbone)]
        if enable and not backbones:
            raise ConfigError(f"{type(self).__name__} has no fusionseg Backbone whose blocks could "
                             "be checkpointed")
        for bb in backbones:
            bb.set_grad_checkpointing(enable)
        self.grad_checkpointing = bool(enable)
        return self

    # ------------------------------------------------------------------ checkpoints
    #: released whole-model state dict -> our keys (see :func:`keep_keys`); a method with a
    #: released format binds its ``release.checkpoint_filter_fn`` here
    checkpoint_filter_fn = staticmethod(keep_keys)
    #: whether a state dict is in this method's released format (see :func:`no_release`)
    is_released_format = staticmethod(no_release)

    @classmethod
    def infer_num_classes(cls, state_dict: Mapping[str, Tensor]) -> int | None:
        """Number of classes of a (converted) state dict of this method, if it tells."""
        return None

    def output_names(self) -> list[str]:
        """Names of the model's several outputs, each scored by ``eval`` besides the main
        logits (AsymFusion: its streams and ``"ensemble"``); ``[]`` (default): one output."""
        return []

    def named_outputs(self, batch: Mapping[str, object]) -> dict[str, Tensor]:
        """``{name: logits [B, K, H, W]}`` for :meth:`output_names`.

        Raises:
            NotImplementedError: a model with a single output.
        """
        raise NotImplementedError(f"{type(self).__name__} has a single output")

    #: name of the submodule whose (first) input is the method's fused features, for the
    #: robust second stage's feature term (``train.robust.feature_weight``); None: none
    fused_feature_module: str | None = None

    def optional_init_keys(self) -> list[str]:
        """Key prefixes of parameters a trained model may lack when it initialises this one
        (``train.init_from``): parts that start as the identity or only feed training losses
        (a zero-initialised presence gate, per-modality auxiliary heads), so a checkpoint
        trained without them loads into a model whose main output is unchanged. Default:
        none."""
        return []

    # ------------------------------------------------------------------ independent streams
    #: True when each modality's stream is computed on its own until fusion (no exchange
    #: between streams inside the encoder): :meth:`encode_streams` and
    #: :meth:`forward_from_streams` are implemented, and the missing-modality protocols
    #: (:mod:`fusionseg.engine.robustness`) encode each modality once per batch and reuse its
    #: features for every subset. False (default): every subset runs :meth:`forward`.
    independent_streams: bool = False

    def encode_streams(self, batch: Mapping[str, object]) -> dict[str, Any]:
        """Per-modality features of ``batch`` before fusion, for :meth:`forward_from_streams`.

        ``{name: features}`` for the modalities the encoder runs on (those present in
        ``batch``, checked and masked as in :meth:`_modality_inputs`), computed as
        :meth:`forward` computes them for that batch (same encoder batching), so that for a
        batch ``b`` obtained from ``batch`` by removing modality keys or setting ``present``
        entries false, ``forward_from_streams(b, encode_streams(batch))`` equals
        ``forward(b)`` in eval mode, bit for bit.

        Raises:
            NotImplementedError: a method whose streams are not independent
                (:attr:`independent_streams` false).
        """
        raise NotImplementedError(f"{type(self).__name__} does not encode streams separately")

    def forward_from_streams(self, batch: Mapping[str, object],
                             streams: Mapping[str, Any]) -> Tensor:
        """Eval-mode :meth:`forward` of ``batch`` with each present modality's features
        taken from ``streams`` (:meth:`encode_streams`) instead of encoding its image;
        logits ``[B, K, H, W]``. ``batch`` still gives the modalities, presence mask and
        size.

        Raises:
            NotImplementedError: as :meth:`encode_streams`.
            KeyError: a modality of ``batch`` has no entry in ``streams``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not encode streams separately")

    # ------------------------------------------------------------------ input size
    @property
    def input_multiple(self) -> int:
        """The least common multiple of the backbones' ``input_multiple`` (1 if none)."""
        out = 1
        for m in self.backbone_modules():
            out = math.lcm(out, int(getattr(m, "input_multiple", 1)))
        return out

    def pad_to_multiple(self, x: Tensor) -> Tensor:
        """Zero-pad ``x [..., H, W]`` at the bottom/right to multiples of
        :attr:`input_multiple` (zero is the normalised mean, i.e. "no signal")."""
        k = self.input_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % k, (-w) % k
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    @staticmethod
    def upsample_logits(logits: Tensor, size: Sequence[int], padded: Sequence[int]) -> Tensor:
        """Bilinear (``align_corners=False``) resize of decoder logits to the ``padded`` input
        size, then crop to the original ``size``. ``[B, K, h, w] -> [B, K, *size]``."""
        # NCHW-contiguous logits: the upsampling and the loss over the full-size logits are
        # faster than on a decode head's channels-last output
        logits = F.interpolate(logits.contiguous(), size=tuple(padded), mode="bilinear",
                               align_corners=False)
        if tuple(padded) != tuple(size):
            logits = logits[..., : size[0], : size[1]]
        return logits

    # ------------------------------------------------------------------ multi-stream input
    def stream_inputs(self, batch: Mapping[str, object]) -> StreamBatch:
        """Every modality of the model as a stream, in model order, with its presence mask.

        An absent modality key becomes a zero image with ``present`` false for every sample; a
        sample whose ``batch["present"]`` entry is false gets a zero image. The inputs are
        checked as in :meth:`_modality_inputs`.
        """
        inputs = {name: (x, mask) for name, x, mask in self._modality_inputs(batch)}
        ref = next(iter(inputs.values()))[0]
        b = ref.shape[0]
        images, cols = [], []
        for name in self.modalities:
            if name not in inputs:
                images.append(ref.new_zeros(b, 3, *ref.shape[-2:]))
                cols.append(torch.zeros(b, dtype=torch.bool, device=ref.device))
                continue
            x, mask = inputs[name]
            if mask is None:
                cols.append(torch.ones(b, dtype=torch.bool, device=ref.device))
            else:  # zeroed by _modality_inputs
                cols.append(mask.to(ref.device))
            images.append(x)
        return StreamBatch(list(self.modalities), images, torch.stack(cols, dim=1))

    # ------------------------------------------------------------------ batch convention
    def _modality_inputs(self, batch: Mapping[str, object]) -> list[ModalityInput]:
        """Select and check the model's modalities in ``batch``.

        Args:
            batch: dict with modality tensors ``[B, C, H, W]`` (float), optionally
                ``"present": bool[B, M]`` (columns in ``self.modalities`` order), ``"label"``,
                ``"meta"`` and other keys, which are ignored.

        Returns:
            ``[(name, x [B, 3, H, W], mask bool[B] or None), ...]`` for the configured
            modalities whose key is in the batch, in ``self.modalities`` order. 1-channel
            tensors are repeated to 3 channels; the images of samples flagged absent are set
            to 0 (so a non-finite value there cannot reach the output). ``mask`` is the modality's ``present`` column,
            or ``None`` when there is no ``present`` entry or the column is all true.

        Raises:
            DataError: not a dict; no configured modality present; a tensor that is not
                ``[B, C, H, W]`` floating point; a channel count other than 1 or 3 (names the
                modality and the count); batch-size or spatial-size mismatch across modalities;
                a ``present`` of the wrong shape; a sample with no present modality.
        """
        if not isinstance(batch, Mapping):
            raise DataError(
                f"a batch must be a dict of modality tensors, got {type(batch).__name__}"
            )
        present = batch.get("present")
        if present is not None:
            present = torch.as_tensor(present)
            if present.ndim != 2 or present.shape[1] != len(self.modalities):
                raise DataError(
                    f"batch['present'] must be bool[B, {len(self.modalities)}] with columns "
                    f"{self.modalities}, got shape {tuple(present.shape)}"
                )
            present = present.to(torch.bool)
        out: list[ModalityInput] = []
        ref: tuple[str, torch.Size] | None = None
        for col, name in enumerate(self.modalities):
            if name not in batch:
                continue
            x = batch[name]
            if not isinstance(x, Tensor) or x.ndim != 4:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise DataError(f"modality {name!r}: expected a tensor [B, C, H, W], got {shape}")
            if not x.is_floating_point():
                raise DataError(
                    f"modality {name!r}: expected a floating-point tensor, got {x.dtype}"
                )
            c = x.shape[1]
            if c == 1:
                x = x.expand(-1, 3, -1, -1)
            elif c != 3:
                raise DataError(
                    f"modality {name!r} has {c} channels; the model takes 3-channel images "
                    f"(1-channel ones are repeated)"
                )
            b, _, h, w = x.shape
            if ref is None:
                ref = (name, x.shape)
            elif (b, h, w) != (ref[1][0], ref[1][2], ref[1][3]):
                raise DataError(
                    f"modality {name!r} has batch/size {(b, h, w)} but {ref[0]!r} has "
                    f"{(ref[1][0], ref[1][2], ref[1][3])}; modalities must be pixel-aligned"
                )
            mask = None
            if present is not None:
                if present.shape[0] != b:
                    raise DataError(
                        f"batch['present'] has {present.shape[0]} rows but modality {name!r} "
                        f"has batch size {b}"
                    )
                m = present[:, col].to(x.device)
                mask = None if bool(m.all()) else m
                if mask is not None:  # absent samples read as zeros: a NaN there stays out
                    x = x.masked_fill(~mask.view(-1, 1, 1, 1), 0.0)
            out.append((name, x, mask))
        if not out:
            raise DataError(
                f"none of the model's modalities {self.modalities} is in the batch "
                f"(keys: {sorted(k for k in batch if isinstance(k, str))})"
            )
        if present is not None:
            cols = [self.modalities.index(n) for n, _, _ in out]
            empty = (~present[:, cols].any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise DataError(f"sample(s) {empty} of the batch have no present modality")
        return out
