"""The backbone contract every fusionseg encoder meets, and the backbone registry.

A backbone maps one 3-channel image to a list of feature maps::

    feats = backbone(x)            # x: [B, 3, H, W] -> [f_1, ..., f_S], f_i: [B, C_i, H_i, W_i]
    backbone.out_channels          # [C_1, ..., C_S]
    backbone.strides               # (s_1, ..., s_S): H_i = ceil(H / s_i) for H a multiple of
                                   #  input_multiple
    backbone.input_multiple        # segmentors zero-pad H and W up to a multiple of this
    type(backbone).checkpoint_filter_fn(state_dict, backbone) # official formats -> our keys
    backbone.no_weight_decay()     # parameter names (relative to the backbone) without decay
    backbone.set_grad_checkpointing(True)                     # recompute activations in backward

Activation (gradient) checkpointing follows timm's convention: ``set_grad_checkpointing(True)``
makes the backbone run each block (a transformer block, a ResNet bottleneck) through
:func:`torch.utils.checkpoint.checkpoint` (non-reentrant): only the block inputs are kept for
backward and the block is recomputed there. It is active only while the backbone is in training
mode and gradients are enabled (:attr:`Backbone.grad_checkpointing_active`); outputs and
gradients are unchanged (the RNG state is restored for the recomputation, so dropout and
stochastic depth draw the same masks, and BatchNorms do not update their running statistics a
second time, see :func:`checkpoint_call`). Segmentors that run backbone blocks themselves with
method modules in between (adapters, prompts, fused bottlenecks) checkpoint each block together
with those modules through :meth:`Backbone.maybe_checkpoint`.

Plain ViTs (one resolution, :class:`ViTBackbone`) take the block indices they tap as a
constructor argument (``out_indices``) and return one map per tap. ``input_multiple`` is what
the architecture needs: the patch size of a ViT (14 for DINOv2, 16 for SAM), 32 for Hiera and
the ResNets in AsymFusion; MiT's overlapping patch embeddings accept any size (as the official code does), so
it declares 1 and nothing is padded.

:class:`TransformerBackbone` adds the access that adapters and multi-stream methods need to run
several modality streams through shared blocks and insert modules between them, without copying
the backbone. A transformer backbone is a sequence of *stages* (MiT: its 4 resolution stages; a
plain ViT: the groups of blocks that end at each tap)::

    carry = x                                        # the image
    for s in range(backbone.num_stages):
        tokens, h, w = backbone.embed(s, carry)      # [B, N, C] (+ prefix tokens for ViTs)
        for blk in backbone.blocks_of(s):            # blk(tokens, h, w) -> tokens
            tokens = backbone.run_block(blk, tokens, h, w)
        feat, carry = backbone.finish_stage(s, tokens, h, w)
        # feat: [B, N, C] normalised tokens of the stage output (the stage norm applied);
        # tokens_to_map(feat, h, w) gives the NCHW map returned by forward()

Each block exposes ``norm1, attn, drop_path, norm2, mlp`` and the two residual branches
``attn_residual(x, H, W)`` / ``mlp_residual(x, H, W)`` (LayerScale included where the
architecture has it), so ``x + attn_residual(x)`` then ``x + mlp_residual(x)`` is the block.

Registration: each backbone file registers, at its bottom, everything about its backbones:

* its builders in :data:`BACKBONES`, with the tiny settings the contract tests use::

    @register_backbone("mit_b0", tiny=dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), ...))
    def mit_b0(**overrides) -> MixVisionTransformer: ...

  or, for a table of published settings, one builder per entry
  (:func:`register_variants`)::

    register_variants(MixVisionTransformer, MIT_SETTINGS, "Build {name} ...", tiny=MIT_TINY)

  A builder's return annotation names the class it builds, so that methods can tell which
  backbones they take and which constructor arguments a backbone accepts before building it
  (:func:`~fusionseg.models.backbones.backbone_class`);

* its family (:func:`~fusionseg.models.backbones.formats.register_family`): the published
  settings and how its official and Hugging Face files and configs are recognised;
* its pretrained files (:func:`~fusionseg.models.catalogue.register_pretrained`: catalogue
  entries with URLs and checksums).

The conversion of a file to our keys is the module-level ``checkpoint_filter_fn(state_dict,
model)`` of the backbone's file, bound on the class (``checkpoint_filter_fn =
staticmethod(checkpoint_filter_fn)``), so callers write ``type(bb).checkpoint_filter_fn(sd, bb)``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...errors import ConfigError
from ...registry import Registry

__all__ = [
    "BACKBONES",
    "Backbone",
    "TransformerBackbone",
    "ViTBackbone",
    "checkpoint_call",
    "checkpoint_filter_fn",
    "register_backbone",
    "register_variants",
    "strip_prefixes",
]

#: ``name -> builder(**overrides) -> Backbone``
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


class _BatchNormStatsFrozen:
    """Context manager: BatchNorms under ``roots`` that are in training mode keep normalising
    with the batch statistics but leave ``running_mean`` / ``running_var`` /
    ``num_batches_tracked`` as they were.

    Inside, their ``momentum`` is 0 (the running averages are updated with weight 0, i.e. kept
    exactly) and ``num_batches_tracked`` is put back on exit. The operations and the tensors
    saved for backward are those of an ordinary training forward, which non-reentrant
    checkpointing requires of a recomputation.
    """

    def __init__(self, roots: Sequence[nn.Module]) -> None:
        self.roots = tuple(roots)
        self._saved: list[tuple[_BatchNorm, float | None, Tensor | None]] = []

    def __enter__(self) -> _BatchNormStatsFrozen:
        seen: set[int] = set()
        for root in self.roots:
            for m in root.modules():
                if (isinstance(m, _BatchNorm) and id(m) not in seen and m.training
                        and m.track_running_stats):
                    seen.add(id(m))
                    nbt = m.num_batches_tracked
                    self._saved.append((m, m.momentum, None if nbt is None else nbt.clone()))
                    m.momentum = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        for m, momentum, nbt in self._saved:
            m.momentum = momentum
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
        self._saved = []


def checkpoint_call(fn: Callable[..., Any], *args: Any, modules: Sequence[nn.Module] = ()) -> Any:
    """``fn(*args)`` with its activations recomputed in backward instead of stored.

    Runs :func:`torch.utils.checkpoint.checkpoint` with ``use_reentrant=False`` (the RNG state
    is saved and restored for the recomputation, so dropout / stochastic depth masks are the
    same). While the recomputation runs, the training-mode BatchNorms inside ``modules`` (and
    inside ``fn`` when it is a module) leave their running statistics alone, so a checkpointed
    step updates them exactly once, as without checkpointing (plain ``checkpoint`` would update
    them twice).

    Args:
        fn: the function or module to run (e.g. a transformer block).
        *args: its positional arguments (tensors and plain values: the token grid ``h, w``,
            stream indices, masks).
        modules: the modules ``fn`` runs besides itself (for the BatchNorm handling).

    Returns:
        What ``fn(*args)`` returns.
    """
    roots = tuple(modules) + ((fn,) if isinstance(fn, nn.Module) else ())

    def contexts() -> tuple[contextlib.AbstractContextManager, _BatchNormStatsFrozen]:
        return contextlib.nullcontext(), _BatchNormStatsFrozen(roots)

    return torch_checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)


def register_backbone(
    name: str, *, tiny: Mapping[str, Any] | None = None, **info: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a backbone builder ``builder(**overrides) -> Backbone``.

    Args:
        name: the name :func:`~fusionseg.models.backbones.create_backbone` takes.
        tiny: constructor overrides giving a tiny instance (for ``tests/models/test_contract.py``).
        **info: kept as the registry entry's ``info`` (e.g. ``decoder_dim=256``).
    """
    return BACKBONES.register(name, tiny=tiny, **info)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """The default conversion of a backbone checkpoint: the keys as they are (a copy).

    A backbone file whose official format differs from its keys defines its own module-level
    ``checkpoint_filter_fn(state_dict, model)`` and binds it on its class. It strips wrapper
    prefixes, renames official keys, drops heads the backbone does not have and resizes
    position embeddings to ``model`` (the backbone instance the result is loaded into;
    ``None``: no instance, nothing resized). It must be idempotent: ``model``'s own
    ``state_dict()`` comes back unchanged.
    """
    return dict(state_dict)


class Backbone(nn.Module):
    """Base class of fusionseg backbones (see the module docstring for the contract).

    Subclasses set :attr:`strides`, :attr:`input_multiple` and :attr:`in_chans`, implement
    :attr:`out_channels` and :meth:`forward`, bind their file's ``checkpoint_filter_fn`` where
    their official formats need one, and override :meth:`no_weight_decay` where their
    parameters need it.
    """

    #: stride of each output map relative to the input
    strides: tuple[int, ...] = ()
    #: segmentors zero-pad the input sides to a multiple of this (1 = any size works)
    input_multiple: int = 1
    #: input channels
    in_chans: int = 3

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    @property
    def out_channels(self) -> list[int]:
        """Channels of each output map, in output order."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        """``[B, in_chans, H, W] -> list`` of NCHW maps at :attr:`strides`."""
        raise NotImplementedError

    #: ``(state_dict, model) -> state_dict``: a checkpoint in an official format -> this
    #: class's keys (:func:`checkpoint_filter_fn`; subclasses bind their file's own)
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (relative to the backbone) that get no weight decay beyond the
        1-D ones (biases and norms are excluded anyway): position embeddings, class and
        register tokens, relative position tables."""
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> Backbone:
        """Turn activation checkpointing per block on or off (timm's method name); returns
        ``self``.

        On: each block keeps only its input for backward and is recomputed there (less memory,
        about one more forward of the blocks in compute). Only active in training mode with
        gradients enabled (:attr:`grad_checkpointing_active`); outputs and gradients do not
        change.
        """
        self.grad_checkpointing = bool(enable)
        return self

    @property
    def grad_checkpointing_active(self) -> bool:
        """Whether blocks are checkpointed now: :attr:`grad_checkpointing` on, the backbone in
        training mode and ``torch.is_grad_enabled()``."""
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    def maybe_checkpoint(
        self, fn: Callable[..., Any], *args: Any, modules: Sequence[nn.Module] = ()
    ) -> Any:
        """``fn(*args)``, through :func:`checkpoint_call` when :attr:`grad_checkpointing_active`.

        ``fn`` is one block of this backbone (or a function running one block together with the
        method modules a segmentor inserts around it, named in ``modules``).
        """
        if self.grad_checkpointing_active:
            return checkpoint_call(fn, *args, modules=modules)
        return fn(*args)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, in_chans, H, W]``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} expects [B, {self.in_chans}, H, W], got {tuple(x.shape)}"
            )

    def check_input_size(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, in_chans, H, W]`` (:meth:`check_input`)
        with ``H`` and ``W`` multiples of :attr:`input_multiple` (segmentors pad to it)."""
        self.check_input(x)
        h, w = x.shape[-2:]
        m = self.input_multiple
        if h % m or w % m:
            raise ValueError(f"{type(self).__name__} needs sides that are multiples of {m}, got "
                             f"{h}x{w}; pad the input (segmentors pad to input_multiple)")


class TransformerBackbone(Backbone):
    """A backbone made of stages of transformer blocks, with the access adapters need.

    Subclasses implement :meth:`embed`, :meth:`blocks_of`, :meth:`norm_of` and
    :meth:`finish_stage` and set :attr:`num_stages` and :attr:`num_prefix_tokens`; the default
    :meth:`forward` runs the loop of the module docstring. Stage indices are 0-based.
    """

    num_stages: int = 4
    #: tokens before the patch tokens (class / register tokens of a ViT; 0 for MiT)
    num_prefix_tokens: int = 0

    def _check_stage(self, stage_idx: int) -> None:
        if not 0 <= stage_idx < self.num_stages:
            raise IndexError(
                f"stage_idx must be in 0..{self.num_stages - 1} (0-based), got {stage_idx}"
            )

    def embed(self, stage_idx: int, carry: Any) -> tuple[Tensor, int, int]:  # pragma: no cover
        """Tokens entering stage ``stage_idx``: ``(tokens [B, N, C], h, w)``.

        ``carry`` is the image ``[B, in_chans, H, W]`` for stage 0 and what
        :meth:`finish_stage` returned as carry for the previous stage after that.
        """
        raise NotImplementedError

    def blocks_of(self, stage_idx: int) -> nn.ModuleList:  # pragma: no cover
        """The blocks of stage ``stage_idx`` (the module itself, not a copy)."""
        raise NotImplementedError

    def norm_of(self, stage_idx: int) -> nn.Module:  # pragma: no cover
        """The norm applied to the output of stage ``stage_idx``."""
        raise NotImplementedError

    def finish_stage(
        self, stage_idx: int, tokens: Tensor, h: int, w: int
    ) -> tuple[Tensor, Any]:  # pragma: no cover
        """End stage ``stage_idx``: ``(feature tokens [B, N, C] after the stage norm, carry)``."""
        raise NotImplementedError

    def tokens_to_map(self, tokens: Tensor, h: int, w: int) -> Tensor:
        """``[B, P + h*w, C]`` tokens -> ``[B, C, h, w]`` map, dropping the ``P`` prefix tokens
        (a channels-last view when there are none)."""
        if self.num_prefix_tokens:
            tokens = tokens[:, self.num_prefix_tokens :]
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    @staticmethod
    def map_to_tokens(x: Tensor) -> tuple[Tensor, int, int]:
        """``[B, C, h, w]`` map -> ``([B, h*w, C] tokens, h, w)``."""
        b, c, h, w = x.shape
        return x.flatten(2).transpose(1, 2), h, w

    def run_block(self, blk: nn.Module, tokens: Tensor, h: int, w: int) -> Tensor:
        """``blk(tokens, h, w)`` (``[B, N, C] -> [B, N, C]``), recomputed in backward when
        :attr:`grad_checkpointing_active`."""
        return self.maybe_checkpoint(blk, tokens, h, w)

    def forward_stage(self, stage_idx: int, carry: Any) -> tuple[Tensor, Any]:
        """Run one whole stage; returns ``(NCHW map, carry for the next stage)``."""
        tokens, h, w = self.embed(stage_idx, carry)
        for blk in self.blocks_of(stage_idx):
            tokens = self.run_block(blk, tokens, h, w)
        feat, carry = self.finish_stage(stage_idx, tokens, h, w)
        return self.tokens_to_map(feat, h, w), carry

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, in_chans, H, W] -> [f_1, ..., f_S]`` (one map per stage)."""
        self.check_input(x)
        outs: list[Tensor] = []
        carry: Any = x
        for s in range(self.num_stages):
            out, carry = self.forward_stage(s, carry)
            outs.append(out)
        return outs


class ViTBackbone(TransformerBackbone):
    """A plain ViT (one resolution, stride ``patch_size``) whose stages are its taps.

    Stage ``s`` is the blocks after tap ``s - 1`` up to and including tap ``s``
    (``out_indices``); its output is the tap's tokens through :meth:`norm_of` (DINOv2: the final
    LayerNorm, SAM: the identity) while the un-normalised tokens go on to the next stage, as
    DINOv2's ``get_intermediate_layers(norm=True)`` does. Every output map is ``[B, C, H / p,
    W / p]`` (``C = embed_dim``, ``p = patch_size``).

    Subclasses call :meth:`set_taps` in ``__init__``, build ``patch_embed`` and ``blocks``, and
    implement :meth:`prepare_tokens` (``image -> (tokens [B, P + N, C], gh, gw)``, beginning
    with :meth:`check_input_size`) and :meth:`norm_of`.
    """

    embed_dim: int
    patch_size: int
    out_indices: list[int]
    blocks: nn.ModuleList

    def set_taps(self, out_indices: Sequence[int], depth: int, patch_size: int) -> None:
        """Set ``out_indices``, ``num_stages`` (one per tap), ``patch_size``,
        ``input_multiple`` and ``strides`` (the patch size for every map).

        Raises:
            ConfigError: ``out_indices`` empty, not increasing, or outside ``0..depth - 1``.
        """
        taps = [int(i) for i in out_indices]
        if not taps or sorted(set(taps)) != taps:
            raise ConfigError(f"out_indices must be increasing block indices, got {taps}")
        if taps[0] < 0 or taps[-1] >= depth:
            raise ConfigError(f"out_indices {taps} outside the {depth} blocks")
        self.out_indices = taps
        self.num_stages = len(taps)
        self.patch_size = int(patch_size)
        self.input_multiple = self.patch_size
        self.strides = (self.patch_size,) * self.num_stages

    def prepare_tokens(self, x: Tensor, patch_embed: nn.Module | None = None
                       ) -> tuple[Tensor, int, int]:  # pragma: no cover - abstract
        """Image ``[B, in_chans, H, W]`` -> ``(tokens [B, P + gh*gw, C], gh, gw)``: patch
        embedding (``patch_embed`` replaces the backbone's own, e.g. MoBaNet's DSM copy),
        prefix tokens and position embeddings."""
        raise NotImplementedError

    @property
    def out_channels(self) -> list[int]:
        """``[C] * len(out_indices)``."""
        return [self.embed_dim] * self.num_stages

    def _bounds(self, stage_idx: int) -> tuple[int, int]:
        self._check_stage(stage_idx)
        start = 0 if stage_idx == 0 else self.out_indices[stage_idx - 1] + 1
        return start, self.out_indices[stage_idx] + 1

    def blocks_of(self, stage_idx: int) -> nn.ModuleList:
        """Blocks ``out_indices[s-1]+1 .. out_indices[s]`` (the modules themselves)."""
        a, b = self._bounds(stage_idx)
        return self.blocks[a:b]

    def embed(self, stage_idx: int, carry: Any) -> tuple[Tensor, int, int]:
        """Stage 0: :meth:`prepare_tokens` of the image; later: the previous stage's tokens
        (``carry = (tokens, gh, gw)``, un-normalised)."""
        self._check_stage(stage_idx)
        if stage_idx == 0:
            return self.prepare_tokens(carry)
        return carry

    def finish_stage(self, stage_idx: int, tokens: Tensor, h: int, w: int
                     ) -> tuple[Tensor, tuple[Tensor, int, int]]:
        """``(norm_of(s)(tokens), (tokens, h, w))``: the tap goes through the stage norm, the
        residual stream goes on un-normalised."""
        return self.norm_of(stage_idx)(tokens), (tokens, h, w)


def register_variants(
    backbone_class: type[Backbone],
    settings: Mapping[str, Mapping[str, Any]],
    doc: str,
    *,
    tiny: Mapping[str, Any] | Callable[[str], Mapping[str, Any]],
    info: Callable[[str], Mapping[str, Any]] | None = None,
) -> None:
    """Register one builder per named setting: ``name -> backbone_class(**{**settings[name],
    **overrides})``, with ``doc.format(name=name)`` as its docstring and ``backbone_class`` as
    its return annotation (what :func:`~fusionseg.models.backbones.backbone_class` reads).

    Args:
        backbone_class: the class every variant builds.
        settings: registered name -> constructor keywords (the published settings).
        doc: the builders' docstring, ``{name}`` replaced by the variant's name.
        tiny: the tiny test overrides (see :func:`register_backbone`), or a function of the
            name giving them.
        info: a function of the name giving the registry entry's ``info`` (e.g. the SegFormer
            head width declared with each MiT).
    """
    for name in settings:
        build = _variant_builder(backbone_class, settings, name)
        build.__name__ = build.__qualname__ = re.sub(r"\W", "_", name.replace("+", "_plus"))
        build.__doc__ = doc.format(name=name)
        register_backbone(name, tiny=dict(tiny(name) if callable(tiny) else tiny),
                          **dict(info(name) if info is not None else {}))(build)


def _variant_builder(backbone_class: type[Backbone], settings: Mapping[str, Mapping[str, Any]],
                     name: str) -> Callable[..., Backbone]:
    """``build(**overrides) -> backbone_class(**{**settings[name], **overrides})``, annotated
    with ``backbone_class`` as its return type."""

    def build(**overrides: Any) -> Backbone:
        return backbone_class(**{**settings[name], **overrides})

    build.__annotations__["return"] = backbone_class
    return build


def strip_prefixes(
    state_dict: Mapping[str, Tensor], prefixes: Sequence[str], own_keys: Sequence[str] = ()
) -> dict[str, Tensor]:
    """Strip the first of ``prefixes`` that every key carries (repeatedly: ``module.backbone.``).

    A prefix that our own keys also start with (one of ``own_keys``) is kept, so the function is
    idempotent on a module's own state dict.
    """
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in sd) and not any(k.startswith(p) for k in own_keys):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                changed = True
                break
    return sd
