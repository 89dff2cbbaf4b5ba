"""StitchFusion: one shared MiT encoder for every modality, MultiAdapters between the streams.

Source: Bingyu Li, Da Zhang, Zhiyuan Zhao, Junyu Gao, Xuelong Li, "StitchFusion: Weaving Any
Visual Modalities to Enhance Multimodal Semantic Segmentation", arXiv 2408.01343 (ACM MM 2025):
Sec. 3.1 (shared pretrained encoder, multi-scale "stitching"), Sec. 3.2-3.3 (MultiAdapter and
its densities, Fig. 3), Sec. 4 (+FFMs). Official code: GitHub ``LiBingyu01/StitchFusion``,
``semseg/models/stitchfusion.py`` (model), ``semseg/models/backbones/stitchfusion.py`` and
``stitchfusion_with_tips_you_can_copy.py`` (encoder, blocks, FeatureCross, per-dataset
variants), ``semseg/models/heads/segformer.py`` (head).

Model (``M`` modalities, each a 3-channel image ``[B, 3, H, W]``; the first configured modality
is stream 1)::

    for stage s = 1..4:
        x_m = patch_embed_s(x_m)                         # same weights for every stream
        for every block of stage s:
            x_m += DropPath(Attn(LN1(x_m)))              # all streams as one batch
            MultiAdapter "att" (sequential over sources, see adapters.MultiAdapter)
            x_m += DropPath(MixFFN(LN2(x_m)))
            MultiAdapter "mlp"
        x_m = norm_s(x_m)                                # streams go on to stage s + 1
        F_s = sum_m x_m   |   FeatureCross_s(x_1..x_M)  # stage output for the decoder
    logits = SegFormerHead(F_1..F_4), bilinear to the input size

Stages without adapters use the plain MiT blocks. Implementation: the ``M`` streams run as one
``[M * B, ...]`` batch through the shared patch embeddings, attention (SDPA) and Mix-FFN; only
the adapters and the stage fusion look at individual streams (``[M, B, N, C]`` views).

Checkpoint keys: the MiT encoder (``backbone.*``) and the decode head (``decode_head.*``) have
the release's names; the adapters (``adapters.block{i}.{j}.*``) and FeatureCross
(``fusion.{s}.*``) are renamed from the release's ``backbone.*`` names by
:func:`~fusionseg.models.methods.stitchfusion.release.checkpoint_filter_fn`, which
``load_checkpoint`` applies to StitchFusion models (the key table is in ``release.py``).

Where ours departs from the release (none changes the function of released weights):

* SDPA instead of explicit attention matrices; streams batched; FeatureCross in map layout.
* Missing modalities (absent key, or ``batch["present"]`` false; the release has no
  missing-modality handling). ``missing="skip"`` (default, ours): a missing stream is skipped.
  A modality absent from the whole batch is not encoded, the MultiAdapters from and to it are
  not applied (the others keep their sequential order) and the stage fusion leaves it out (sum
  over the present streams; FeatureCross without its ``proj`` columns, see
  :class:`~fusionseg.models.methods.stitchfusion.featurecross.FeatureCrossStage`). A sample missing a
  modality in a mixed batch still runs that stream (batched) but its adapter messages to the
  other streams and its fusion term are zeroed for that sample, which gives the same logits
  as the absent key (in eval; BatchNorm batch statistics couple samples in training).
  ``missing="zeros"``: zero images through every stream, as if present - the zero-filling
  protocol of the sensor-failure benchmark (arXiv 2503.18445) under which the published
  StitchFusion EMM numbers were measured. With every modality present both are the same model.
* Encoder LayerNorms (``norm1``, ``norm2``, ``norm{i}``) use eps ``1e-5`` like the release's
  ``nn.LayerNorm(dim)`` (the NVlabs MiT uses 1e-6); ``norm_eps`` sets it.
* The released model builds a FeatureCross even in its sum-fusion variants (DELIVER), where it
  is unused: loading such a file into ``fusion="sum"`` drops those keys with a warning.
* Initialisation: adapters and FeatureCross get what the release's model-level
  ``_init_weights`` gives them; the decode head keeps :class:`SegFormerHead`'s own init (the
  release re-initialises it too), so that StitchFusion and the ``sum_fusion`` baseline differ
  only by the method's modules when trained from scratch. Irrelevant once weights are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor, nn

from ...backbones import default_decoder_dim
from ...backbones.mit import MIT_TINY, MixVisionTransformer
from ...fusion.presence_gate import PresenceGate
from ...heads.segformer import SegFormerHead
from ...layers import check_stream_indices
from ...options import BackboneKwargs, BackboneOptions, DropPathRate, Pretrained, resolve_options
from ...registry import register_model
from ...segmentor import AuxiliaryLogits, SegmentationOutput, Segmentor
from .adapters import ADAPTER_DENSITIES, MultiAdapter
from .featurecross import FeatureCrossStage
from .release import checkpoint_filter_fn, is_released_format

__all__ = [
    "FUSIONS",
    "Density",
    "MAX_MODALITIES",
    "MISSING_MODES",
    "StitchFusionOptions",
    "StitchFusionSegmentor",
]

#: one stage's adapter density (``None``: plain MiT blocks), see :class:`MultiAdapter`
Density = Literal["shared", "pairwise", "directional"]
#: stage fusion: the release's sum, FeatureCross (+FFMs) or a presence-aware gate (ours)
Fusion = Literal["sum", "featurecross", "gate"]
#: missing-modality handling: skip the stream (ours) | zero images through it (2503.18445)
MissingMode = Literal["skip", "zeros"]

#: stage fusion choices
FUSIONS: tuple[str, ...] = get_args(Fusion)
#: missing-modality modes
MISSING_MODES: tuple[str, ...] = get_args(MissingMode)
#: adapter key names use one digit per stream (``adap_t_att12``), as in the release
MAX_MODALITIES = 8

_NONE = (None, "none", "")


def _density(value: object) -> str | None:
    """One stage's density from a config value: ``None`` / ``"none"`` / ``""`` -> ``None``.

    Raises:
        ValueError: not a density.
    """
    if isinstance(value, str | None) and value in _NONE:
        return None
    if isinstance(value, str) and value in ADAPTER_DENSITIES:
        return value
    raise ValueError(
        f"unknown adapter density {value!r}; choose from {', '.join(ADAPTER_DENSITIES)} or none"
    )


class StitchFusionOptions(BackboneOptions):
    """Options of ``stitchfusion`` (the ``model`` section of a config; see
    :class:`StitchFusionSegmentor` for what they do in detail)."""

    method_name: ClassVar[str] = "stitchfusion"
    backbone_types: ClassVar[tuple[type, ...]] = (MixVisionTransformer,)
    backbone_overrides: ClassVar[tuple[str, ...]] = ("drop_path_rate",)

    modalities: tuple[str, ...] = Field(
        ("rgb", "depth"), min_length=1,
        description="ordered modality names, 1..8; the first is the release's stream 1")
    backbone: str = Field("mit_b2", description="shared MiT encoder (mit_b0 .. mit_b5)")
    pretrained: Pretrained = Field(
        None, description="encoder weights: a local MiT file or a catalogue name (None: random)")
    adapter: Density | None | tuple[Density | None, ...] = Field(
        "pairwise",
        description="MultiAdapter density of every stage, or a list of 4 (none: plain blocks)")
    fusion: Fusion = Field(
        "sum", description="stage fusion: sum, featurecross (+FFMs) or a presence-aware gate")
    drop_path_rate: DropPathRate = Field(
        0.1, description="encoder stochastic depth (also on the adapter outputs)")
    decoder_dim: int | None = Field(
        None, gt=0, description="SegFormer head width E (None: 256 for mit_b0/b1, else 512)")
    freeze_backbone: bool = Field(
        False, description="freeze the shared encoder (adapters, fusion and head train)")
    adapter_hidden: int = Field(8, gt=0, description="adapter bottleneck width")
    adapter_dropout: float = Field(0.1, ge=0, le=1, description="dropout inside the adapters")
    norm_eps: float = Field(
        1e-5, gt=0, description="eps of the encoder's LayerNorms (release: 1e-5)")
    backbone_kwargs: BackboneKwargs = None
    missing: MissingMode = Field(
        "skip", description="a missing modality: skip its stream, or feed zero images")
    modality_aux: float = Field(
        0.0, ge=0, description="weight of the per-modality auxiliary outputs (0: none)")
    gate_lr_mult: float = Field(
        10.0, gt=0, description="learning-rate multiplier of the gates (fusion: gate)")

    @field_validator("modalities")
    @classmethod
    def _at_most_eight(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > MAX_MODALITIES:
            raise ValueError(
                f"StitchFusion supports 1..{MAX_MODALITIES} modalities, got {len(v)}")
        return v

    @field_validator("adapter", mode="before")
    @classmethod
    def _stage_densities(cls, v: object) -> object:
        """``"none"`` / ``""`` -> ``None``; a list must have one density per stage."""
        if isinstance(v, list | tuple):
            if len(v) != 4:
                raise ValueError(
                    f"adapter must be one density or a list of 4 (one per stage), not {len(v)}")
            return tuple(_density(a) for a in v)
        return _density(v)

    @field_validator("fusion", "missing", mode="before")
    @classmethod
    def _known_choice(cls, v: object, info: ValidationInfo) -> object:
        """The pre-options messages (``unknown missing mode 'drop'; choose one of ...``)."""
        choices = get_args(cls.model_fields[info.field_name].annotation)
        if isinstance(v, str) and v not in choices:
            what = "missing mode" if info.field_name == "missing" else info.field_name
            raise ValueError(f"unknown {what} {v!r}; choose one of {', '.join(choices)}")
        return v

    def stage_densities(self) -> list[str | None]:
        """``adapter`` as 4 per-stage densities (``None``: plain blocks)."""
        return list(self.adapter) if isinstance(self.adapter, tuple) else [self.adapter] * 4


class StitchFusionSegmentor(Segmentor):
    """StitchFusion segmentor (shared MiT encoder + MultiAdapters + stage fusion + SegFormer head).

    ``forward(batch) -> logits [B, K, H, W]`` (bilinear upsampling of the 1/4-scale head
    output); see :meth:`encode` for the stage maps and the module docstring for the model.

    Built from :class:`StitchFusionOptions` (an instance, or its fields as keyword arguments:
    ``StitchFusionSegmentor(num_classes=25, modalities=["rgb", "depth"], backbone="mit_b2",
    fusion="featurecross")``; ``create_model({"name": "stitchfusion", ...})`` does the same from
    a config). The released MCubeS model, for example, is ``backbone: mit_b4``, ``modalities:
    [rgb, nir, aolp, dolp]``, ``adapter: pairwise``, ``fusion: featurecross``. In more detail:

        modalities: the order is the stream order of the release (the first is stream 1): it
            names the adapters (``adap_t_att12`` = streams 1 and 2) and orders FeatureCross's
            input columns, so a released file needs its config's order. At most 8 (one digit
            per stream in the adapter names).
        backbone: a MiT (``mit_b0 .. mit_b5``; another encoder is a ConfigError).
            ``pretrained`` loads the NVlabs ImageNet file into it; whole released StitchFusion
            files go through :func:`fusionseg.models.load_checkpoint` instead.
        adapter: one density for every stage or a list of 4 (one per stage), each
            ``"shared"`` (one adapter for all pairs), ``"pairwise"`` (one per unordered pair,
            both directions), ``"directional"`` (one per ordered pair) or ``none`` / ``null``
            (plain MiT blocks), paper Fig. 3; the recipes use per-stage layouts such as
            ``[none, none, pairwise, pairwise]`` (DELIVER RGB-D-E-L). ``"none"`` and ``""`` are
            stored as ``None``. With one modality no adapter is built.
        fusion: ``"sum"`` (plain StitchFusion), ``"featurecross"`` (the paper's +FFMs rows)
            or ``"gate"`` (ours: the sum replaced by ``n_present`` times a presence-aware
            per-pixel softmax average,
            :class:`~fusionseg.models.fusion.presence_gate.PresenceGate`; it starts as the sum,
            so a ``"sum"`` model initialises it, ``train.init_from``).
        decoder_dim: ``None`` gives the released width (256 for mit_b0/b1, 512 otherwise).
        drop_path_rate: the block's drop path is applied to every adapter output too, as
            released.
        freeze_backbone: the shared encoder is frozen; adapters, fusion and head train (the
            release fine-tunes everything).
        norm_eps: eps of the encoder's block and stage LayerNorms; the release's
            ``nn.LayerNorm(dim)`` default 1e-5 (the NVlabs MiT uses 1e-6).
        missing: ``"skip"`` (a missing modality's stream, adapters and fusion term are left
            out, per batch or per sample; see the module docstring) or ``"zeros"`` (zero
            images through every stream, the zero-filling protocol of arXiv 2503.18445 behind
            the published StitchFusion EMM numbers).
        modality_aux: (ours) in training, the decode head on each stream's unfused stage maps
            is an auxiliary output ``modality_<name>`` of this weight, its loss counted where
            that modality is present (see :meth:`forward`).
        gate_lr_mult: see :class:`~fusionseg.models.fusion.presence_gate.PresenceGate`.

    Sources: arXiv 2408.01343, Sec. 3 (model), Fig. 3 (densities), Sec. 4 (+FFMs); official
    ``semseg/models/stitchfusion.py``, ``semseg/models/backbones/stitchfusion.py`` and
    ``stitchfusion_with_tips_you_can_copy.py`` (GitHub ``LiBingyu01/StitchFusion``).

    Raises:
        ConfigError: options that do not validate (more than 8 modalities, an unknown fusion,
            adapter density or missing mode, a list of adapters not of length 4,
            ``backbone_kwargs`` repeating ``pretrained`` or ``drop_path_rate``, ...), a
            backbone that is not a MiT.
        FileNotFoundError, CheckpointMismatchError: from loading ``pretrained``.
    """

    Options = StitchFusionOptions

    fused_feature_module = "decode_head"  # its input: the fused maps

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
    is_released_format = staticmethod(is_released_format)

    def __init__(self, options: StitchFusionOptions | None = None, /, **kwargs: Any) -> None:
        o = resolve_options(StitchFusionOptions, options, kwargs)
        super().__init__(o.modalities, o.num_classes)
        self.options = o
        backbone = o.build_backbone()
        self.modality_aux = float(o.modality_aux)
        self.missing = o.missing
        self.backbone = backbone
        self.stage_adapters = o.stage_densities()
        self.fusion_kind = o.fusion
        m = len(self.modalities)
        dims, depths = backbone.embed_dims, backbone.depths

        for s in range(4):  # release LayerNorm eps (nn.LayerNorm default) in blocks and stages
            for blk in backbone.blocks_of(s):
                blk.norm1.eps = blk.norm2.eps = o.norm_eps
            backbone.norm_of(s).eps = o.norm_eps

        self.adapters = nn.ModuleDict()
        for s, density in enumerate(self.stage_adapters):
            if density is not None and m > 1:
                self.adapters[f"block{s + 1}"] = nn.ModuleList(
                    MultiAdapter(dims[s], m, density, o.adapter_hidden, o.adapter_dropout)
                    for _ in range(depths[s])
                )
        self.fusion = (
            nn.ModuleList(FeatureCrossStage(dims[s], m) for s in range(4))
            if o.fusion == "featurecross"
            else None
        )
        self.fusion_gates = (
            nn.ModuleList(PresenceGate(dims[s], m, o.gate_lr_mult) for s in range(4))
            if o.fusion == "gate" else None
        )
        self.decode_head = SegFormerHead(
            dims, o.num_classes, embed_dim=o.decoder_dim or default_decoder_dim(o.backbone)
        )
        if o.freeze_backbone:
            self.freeze_backbone()

    def optional_init_keys(self) -> list[str]:
        """The zero-initialised gates (``fusion: gate``) may be absent from an init model."""
        return ["fusion_gates."] if self.fusion_gates is not None else []

    # ------------------------------------------------------------------ parameters
    def adapter_param_count(self) -> int:
        """Parameters of all MultiAdapters (the method's overhead over the shared encoder)."""
        return sum(p.numel() for p in self.adapters.parameters())

    def extra_repr(self) -> str:
        return (
            f"modalities={self.modalities}, adapters={self.stage_adapters}, "
            f"fusion={self.fusion_kind!r}, missing={self.missing!r}"
        )

    # ------------------------------------------------------------------ forward
    def stream_input(self, batch: Mapping[str, object]) -> Tensor:
        """All modalities as one batch ``[M * B, 3, H, W]`` (stream-major, config order).

        Absent modalities and samples whose ``present`` entry is false are zero images (see
        :meth:`Segmentor.stream_inputs`); the input of ``missing="zeros"``.
        """
        return self.stream_inputs(batch).stacked()

    def streams_to_run(
        self, batch: Mapping[str, object]
    ) -> tuple[Tensor, list[int] | None, Tensor | None]:
        """The streams :meth:`forward` encodes, for the model's ``missing`` mode.

        Returns:
            ``(x, streams, present)``: ``x [R * B, 3, H, W]`` stream-major; ``streams`` the
            model-order indices of the ``R`` streams (``None`` = all ``M``); ``present``
            ``bool[B, R]``, or ``None`` when every run stream is present in every sample.
            ``"zeros"``: all ``M`` streams, missing ones as zero images, ``present`` ``None``.
            ``"skip"``: the modalities with at least one present sample, with their mask.
        """
        inputs = self.stream_inputs(batch)
        if self.missing == "zeros":
            return inputs.stacked(), None, None
        m = len(self.modalities)
        run = [j for j in range(m) if bool(inputs.present[:, j].any())]
        imgs = [inputs.images[j] for j in run]
        x = torch.cat(imgs, dim=0) if len(imgs) > 1 else imgs[0]
        present = inputs.present[:, run]
        return x, (None if len(run) == m else run), (None if bool(present.all()) else present)

    def _fuse(
        self, s: int, tokens: Tensor, h: int, w: int, streams: list[int] | None,
        present: Tensor | None,
    ) -> Tensor:
        """Stage fusion of ``tokens [R, B, N, C]`` (streams ``streams``, mask ``present``
        ``bool[B, R]``) -> ``[B, C, h, w]``: the sum over the present streams, or
        FeatureCross over them."""
        if self.fusion is not None:
            return self.fusion[s](tokens, h, w, streams=streams, present=present)
        if self.fusion_gates is not None:
            r, b = tokens.shape[:2]
            maps = self.backbone.tokens_to_map(tokens.flatten(0, 1), h, w)
            maps = maps.view(r, b, *maps.shape[1:])
            keep = None if present is None else present.t()  # [R, B]
            count = (float(r) if keep is None
                     else keep.sum(0).to(maps.dtype).view(b, 1, 1, 1))
            index = list(range(r)) if streams is None else list(streams)
            return self.fusion_gates[s](maps, keep, index) * count
        if present is not None:
            r, b = present.shape[1], present.shape[0]
            tokens = tokens * present.t().to(tokens.dtype).view(r, b, 1, 1)
        return self.backbone.tokens_to_map(tokens.sum(0), h, w)

    def encode(
        self, x: Tensor, streams: Sequence[int] | None = None, present: Tensor | None = None,
        stream_maps: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """Encoder + stage fusion.

        Args:
            x: ``[R * B, 3, H, W]`` streams stacked stream-major (see :meth:`stream_input`,
                :meth:`streams_to_run`).
            streams: the model-order indices of the ``R`` streams, increasing (``None`` = all
                ``M``); the adapters of other streams are not applied.
            present: ``bool[B, R]`` or ``None`` (all present): a false entry removes that
                sample's stream from the adapter messages and the fusion.
            stream_maps: a list that receives each stage's unfused maps ``[R, B, C_s, h, w]``
                (for the per-modality auxiliary outputs); ``None``: not kept.

        Returns:
            ``[F_1, F_2, F_3, F_4]``, ``F_s: [B, C_s, H / 2^(s+1), W / 2^(s+1)]`` (ceil).

        Raises:
            ValueError: ``x``'s batch not a multiple of ``R``; bad ``streams`` / ``present``.
        """
        m = len(self.modalities)
        run = list(range(m)) if streams is None else [int(i) for i in streams]
        r = len(run)
        if r < 1 or x.shape[0] % r:
            raise ValueError(f"x has {x.shape[0]} images, not a multiple of {r} streams")
        if run != list(range(m)):
            sel: list[int] | None = check_stream_indices(run, m)
        else:
            sel = None
        bb = self.backbone
        b = x.shape[0] // r
        if present is not None:
            present = present.to(device=x.device, dtype=torch.bool)
            if tuple(present.shape) != (b, r):
                raise ValueError(f"present must be bool[{b}, {r}], got {tuple(present.shape)}")
            if bool(present.all()):
                present = None
        feats = []
        for s in range(4):
            tokens, h, w = bb.embed(s, x)  # [R * B, N, C]
            n, c = tokens.shape[1:]
            adapters = self.adapters[f"block{s + 1}"] if f"block{s + 1}" in self.adapters else None
            if r < 2:
                adapters = None  # one stream: nothing to exchange
            for j, blk in enumerate(bb.blocks_of(s)):
                if adapters is None:
                    tokens = bb.run_block(blk, tokens, h, w)
                else:  # block + its MultiAdapters, one checkpointed unit
                    tokens = bb.maybe_checkpoint(self.adapted_block, blk, adapters[j], tokens,
                                                 h, w, r, sel, present,
                                                 modules=(blk, adapters[j]))
            tokens, x = bb.finish_stage(s, tokens, h, w)  # stage norm; x: next stage's input
            if stream_maps is not None:
                stream_maps.append(bb.tokens_to_map(tokens, h, w).view(r, b, c, h, w))
            feats.append(self._fuse(s, tokens.view(r, b, n, c), h, w, sel, present))
        return feats

    @staticmethod
    def adapted_block(
        blk: nn.Module, ad: MultiAdapter, tokens: Tensor, h: int, w: int, r: int,
        streams: list[int] | None, present: Tensor | None,
    ) -> Tensor:
        """One MiT block with its MultiAdapters (Sec. 3.2, Fig. 3; release ``Block_*``
        classes): ``x += attn_residual(x)``, MultiAdapter ``"att"``, ``x += mlp_residual(x)``,
        MultiAdapter ``"mlp"``.

        Args:
            blk: the shared MiT block; ad: its MultiAdapter.
            tokens: ``[R * B, N, C]`` (``R = r`` streams, stream-major), ``N = h * w``.
            streams, present: as in :meth:`encode` (model-order stream indices or ``None``;
                ``bool[B, R]`` or ``None``).

        Returns:
            ``[R * B, N, C]``. The unit :meth:`encode` checkpoints when the backbone's
            activation checkpointing is on.
        """
        rb, n, c = tokens.shape
        b = rb // r
        tokens = tokens + blk.attn_residual(tokens, h, w)
        tokens = ad(tokens.view(r, b, n, c), "att", blk.norm1, blk.drop_path,
                    streams=streams, present=present).view(rb, n, c)
        tokens = tokens + blk.mlp_residual(tokens, h, w)
        return ad(tokens.view(r, b, n, c), "mlp", blk.norm2, blk.drop_path,
                  streams=streams, present=present).view(rb, n, c)

    def forward(self, batch: Mapping[str, object]) -> Tensor | SegmentationOutput:
        """``batch`` (the fusionseg batch convention) -> logits ``[B, K, H, W]``; missing
        modalities as set by ``missing`` (see :meth:`streams_to_run`). In training with
        ``modality_aux > 0``: a :class:`SegmentationOutput` with ``modality_<name>`` auxiliary
        logits ``[B, K, H/4, W/4]`` per stream run."""
        x, streams, present = self.streams_to_run(batch)
        size = x.shape[-2:]
        x = self.pad_to_multiple(x)
        if not (self.training and self.modality_aux > 0):
            feats = self.encode(x, streams, present)
            return self.upsample_logits(self.decode_head(feats), size, x.shape[-2:])
        maps: list[Tensor] = []
        feats = self.encode(x, streams, present, stream_maps=maps)
        logits = self.upsample_logits(self.decode_head(feats), size, x.shape[-2:])
        aux = {}
        for j, col in enumerate(range(len(self.modalities)) if streams is None else streams):
            stream = self.decode_head([f[j] for f in maps])
            if tuple(x.shape[-2:]) != tuple(size):  # crop the padding before the aux loss
                stream = self.upsample_logits(stream, size, x.shape[-2:])
            aux[f"modality_{self.modalities[col]}"] = AuxiliaryLogits(
                stream, self.modality_aux, sample_mask=None if present is None else present[:, j])
        return SegmentationOutput(logits, aux=aux)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def infer_num_classes(cls, state_dict: Mapping[str, Tensor]) -> int | None:
        """``K`` from the SegFormer head's ``decode_head.linear_pred`` weight."""
        return SegFormerHead.num_classes_in(state_dict, "decode_head.")


#: tiny settings of the contract tests; FeatureCross's channel attention reduces by 16, so
#: every stage is at least 16 wide
STITCHFUSION_TINY = {
    "num_classes": 3,
    "modalities": ["rgb", "depth", "lidar"],
    "backbone": "mit_b0",
    "adapter": "pairwise",
    "fusion": "featurecross",
    "decoder_dim": 16,
    "backbone_kwargs": {**MIT_TINY, "embed_dims": (16, 16, 32, 64)},
}


register_model("stitchfusion", tiny=STITCHFUSION_TINY)(StitchFusionSegmentor)
