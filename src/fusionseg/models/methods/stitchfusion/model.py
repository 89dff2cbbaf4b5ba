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
            MultiAdapter "att" (sequential over sources, see peft.adapters.MultiAdapter)
            x_m += DropPath(MixFFN(LN2(x_m)))
            MultiAdapter "mlp"
        x_m = norm_s(x_m)                                # streams go on to stage s + 1
        F_s = sum_m x_m   |   FeatureCross_s(x_1..x_M)  # stage output for the decoder
    logits = SegFormerHead(F_1..F_4), bilinear to the input size

Stages without adapters use the plain MiT blocks. Implementation: the ``M`` streams run as one
``[M * B, ...]`` batch through the shared patch embeddings, attention (SDPA) and Mix-FFN; only
the adapters and the stage fusion look at individual streams (``[M, B, N, C]`` views).

Checkpoint keys (ours; the released names map onto them, see :func:`release_to_fusionseg` and
:meth:`StitchFusionSegmentor.checkpoint_filter_fn`, which ``load_checkpoint`` applies to
StitchFusion models)::

    backbone.{patch_embed*, block*, norm*}.*        == release (official MiT names)
    adapters.block{i}.{j}.{adap_t_att{a}{b}, adap_t_mlp{a}{b}, adap_t, adap2_t}.adapter_*
        <- release backbone.block{i}.{j}.<same>.*
    fusion.{s}.{proj, mix_ffn.*, channel_attn.fc.*}
        <- release backbone.feature_cross.{liner_fusion_layers, mix_ffn, channel_attns}.{s}.*
    decode_head.*                                    == release

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

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ....errors import ConfigError
from ...backbones import create_backbone, default_decoder_dim
from ...backbones.mit import MIT_TINY, MixVisionTransformer
from ...fusion.presence_gate import PresenceGate
from ...heads.segformer import SegFormerHead
from ...layers import check_stream_indices
from ...registry import register_model
from ...segmentor import AuxiliaryLogits, SegmentationOutput, Segmentor
from ...weights import rename_keys
from .adapters import ADAPTER_DENSITIES, MultiAdapter
from .featurecross import FeatureCrossStage

__all__ = [
    "FUSIONS",
    "MAX_MODALITIES",
    "MISSING_MODES",
    "StitchFusionSegmentor",
    "build_stitchfusion",
    "release_to_fusionseg",
]

#: stage fusion choices
FUSIONS = ("sum", "featurecross", "gate")
#: missing-modality handling: skip the stream (ours) | zero images through it (2503.18445)
MISSING_MODES = ("skip", "zeros")
#: adapter key names use one digit per stream (``adap_t_att12``), as in the release
MAX_MODALITIES = 8

_NONE = (None, "none", "")


def _stage_densities(adapter: str | None | Sequence[str | None]) -> list[str | None]:
    """Normalise the ``adapter`` option to 4 per-stage densities (``None`` = plain blocks)."""
    if adapter is None or isinstance(adapter, str):
        adapter = [adapter] * 4
    adapter = list(adapter)
    if len(adapter) != 4:
        raise ConfigError(
            f"adapter must be one density or a list of 4 (one per stage), got {adapter}"
        )
    out: list[str | None] = []
    for a in adapter:
        if a in _NONE:
            out.append(None)
        elif a in ADAPTER_DENSITIES:
            out.append(a)
        else:
            raise ConfigError(
                f"unknown adapter density {a!r}; choose from {', '.join(ADAPTER_DENSITIES)} or none"
            )
    return out


class StitchFusionSegmentor(Segmentor):
    """StitchFusion segmentor (shared MiT encoder + MultiAdapters + stage fusion + SegFormer head).

    Args:
        backbone: a :class:`~fusionseg.models.backbones.mit.MixVisionTransformer` (shared by
            all modalities).
        modalities: ordered modality names (1..8); the first is stream 1 of the release.
        num_classes: ``K``.
        adapter: one density for all stages or a list of 4 (per stage): ``"shared"``,
            ``"pairwise"``, ``"directional"`` or ``None``/``"none"`` (plain blocks).
        fusion: ``"sum"`` (plain StitchFusion), ``"featurecross"`` (+FFMs) or ``"gate"``
            (ours: the sum replaced by ``n_present`` times a presence-aware per-pixel softmax
            average, :class:`~fusionseg.models.fusion.presence_gate.PresenceGate`; it starts
            as the sum, so a ``"sum"`` model initialises it, ``train.init_from``).
        decoder_dim: SegFormer head width ``E``.
        adapter_hidden: adapter bottleneck width (8).
        adapter_dropout: dropout inside the adapters (0.1).
        norm_eps: eps of the encoder's block and stage LayerNorms (release: 1e-5).
        missing: ``"skip"`` (a missing modality's stream, adapters and fusion term are left
            out, per batch or per sample; see the module docstring) or ``"zeros"`` (zero
            images through every stream, the zero-filling protocol of arXiv 2503.18445).
        modality_aux: weight of the per-modality auxiliary outputs in training (ours; 0:
            none; see :meth:`forward`).
        gate_lr_mult: learning-rate multiplier of the gates (``fusion: gate``).

    ``forward(batch) -> logits [B, K, H, W]``; see :meth:`encode` for the stage maps.

    Raises:
        ValueError: more than 8 modalities, a backbone that is not a MiT, an unknown fusion,
            adapter density or missing mode.
    """

    fused_feature_module = "decode_head"  # its input: the fused maps

    def __init__(
        self,
        backbone: MixVisionTransformer,
        modalities: Sequence[str],
        num_classes: int,
        adapter: str | None | Sequence[str | None] = "pairwise",
        fusion: str = "sum",
        decoder_dim: int = 256,
        adapter_hidden: int = 8,
        adapter_dropout: float = 0.1,
        norm_eps: float = 1e-5,
        missing: str = "skip",
        modality_aux: float = 0.0,
        gate_lr_mult: float = 10.0,
    ) -> None:
        super().__init__(modalities, num_classes)
        if modality_aux < 0:
            raise ConfigError(f"stitchfusion modality_aux must be >= 0, got {modality_aux}")
        self.modality_aux = float(modality_aux)
        m = len(self.modalities)
        if m > MAX_MODALITIES:
            raise ConfigError(
                f"StitchFusion supports 1..{MAX_MODALITIES} modalities, got {m}: {self.modalities}"
            )
        if not isinstance(backbone, MixVisionTransformer):
            raise ConfigError(
                f"StitchFusion needs a MiT backbone (mit_b0..mit_b5), got {type(backbone).__name__}"
            )
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if missing not in MISSING_MODES:
            raise ConfigError(
                f"unknown missing mode {missing!r}; choose one of {', '.join(MISSING_MODES)}"
            )
        self.missing = missing
        self.backbone = backbone
        self.stage_adapters = _stage_densities(adapter)
        self.fusion_kind = fusion
        dims, depths = backbone.embed_dims, backbone.depths

        for s in range(4):  # release LayerNorm eps (nn.LayerNorm default) in blocks and stages
            for blk in backbone.blocks_of(s):
                blk.norm1.eps = blk.norm2.eps = norm_eps
            backbone.norm_of(s).eps = norm_eps

        self.adapters = nn.ModuleDict()
        for s, density in enumerate(self.stage_adapters):
            if density is not None and m > 1:
                self.adapters[f"block{s + 1}"] = nn.ModuleList(
                    MultiAdapter(dims[s], m, density, adapter_hidden, adapter_dropout)
                    for _ in range(depths[s])
                )
        self.fusion = (
            nn.ModuleList(FeatureCrossStage(dims[s], m) for s in range(4))
            if fusion == "featurecross"
            else None
        )
        self.fusion_gates = (
            nn.ModuleList(PresenceGate(dims[s], m, gate_lr_mult) for s in range(4))
            if fusion == "gate" else None
        )
        self.decode_head = SegFormerHead(dims, num_classes, embed_dim=decoder_dim)

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
    def checkpoint_filter_fn(
        cls, state_dict: Mapping[str, Tensor], model: Segmentor | None = None
    ) -> dict[str, Tensor]:
        """Released StitchFusion state dicts -> our keys (:func:`release_to_fusionseg`), then
        fitted to ``model``'s variant (:func:`_fit_to_model`: unused FeatureCross dropped for
        sum fusion, shared / pairwise adapter names exchanged for two modalities)."""
        sd = release_to_fusionseg(state_dict) if cls.is_released_format(state_dict) else dict(
            state_dict
        )
        return _fit_to_model(sd, model)

    @classmethod
    def is_released_format(cls, state_dict: Mapping[str, Tensor]) -> bool:
        """True for the authors' key layout (adapters / FeatureCross under ``backbone.``)."""
        return any(_RELEASE_MARK.match(k) for k in state_dict)

    @classmethod
    def infer_num_classes(cls, state_dict: Mapping[str, Tensor]) -> int | None:
        """``K`` from the SegFormer head's ``decode_head.linear_pred`` weight."""
        return SegFormerHead.num_classes_in(state_dict, "decode_head.")


# --------------------------------------------------------------------------- builder
@register_model(
    "stitchfusion",
    segmentor=StitchFusionSegmentor,
    tiny={
        "num_classes": 3,
        "modalities": ["rgb", "depth", "lidar"],
        "backbone": "mit_b0",
        "adapter": "pairwise",
        "fusion": "featurecross",
        "decoder_dim": 16,
        # FeatureCross's channel attention reduces by 16: stage widths >= 16
        "backbone_kwargs": {**MIT_TINY, "embed_dims": (16, 16, 32, 64)},
    },
)
def build_stitchfusion(
    num_classes: int,
    modalities: Sequence[str] = ("rgb", "depth"),
    backbone: str = "mit_b2",
    pretrained: str | Path | None = None,
    adapter: str | None | Sequence[str | None] = "pairwise",
    fusion: str = "sum",
    drop_path_rate: float = 0.1,
    decoder_dim: int | None = None,
    freeze_backbone: bool = False,
    adapter_hidden: int = 8,
    adapter_dropout: float = 0.1,
    norm_eps: float = 1e-5,
    backbone_kwargs: Mapping[str, object] | None = None,
    missing: str = "skip",
    modality_aux: float = 0.0,
    gate_lr_mult: float = 10.0,
) -> StitchFusionSegmentor:
    """Build StitchFusion.

    Example (the released MCubeS-style model; the first modality is stream 1)::

        create_model({"name": "stitchfusion", "backbone": "mit_b0", "modalities": ["rgb",
                      "depth"], "num_classes": 25, "adapter": "pairwise",
                      "fusion": "featurecross"})

    Args:
        num_classes: ``K``.
        modalities: ordered modality names, 1..8.
        backbone: ``mit_b0 .. mit_b5``.
        pretrained: local path of the official MiT ImageNet file (``mit_b2.pth``); use
            :func:`fusionseg.models.load_checkpoint` for whole released StitchFusion files.
        adapter: density for all stages or a list of 4 (``shared`` / ``pairwise`` /
            ``directional`` / ``none``).
        fusion: ``"sum"``, ``"featurecross"`` or ``"gate"`` (see the segmentor).
        drop_path_rate: encoder stochastic depth (0.1, also applied to the adapters' outputs).
        decoder_dim: head width; ``None`` = 256 for mit_b0/b1, 512 otherwise (as released).
        freeze_backbone: freeze the shared encoder (adapters, fusion and head train); the
            release fine-tunes everything.
        adapter_hidden, adapter_dropout: adapter bottleneck width (8) and dropout (0.1).
        norm_eps: encoder LayerNorm eps (1e-5 as released).
        backbone_kwargs: constructor overrides for the backbone (e.g. tiny test widths).
        missing: ``"skip"`` (default: a missing modality's stream, its adapters and its
            fusion term are left out) or ``"zeros"`` (zero images through every stream, the
            protocol of arXiv 2503.18445 behind the published StitchFusion EMM numbers).
        modality_aux: weight of the per-modality auxiliary outputs (ours; 0: none): in
            training the decode head on each stream's unfused stage maps, ``modality_<name>``,
            its loss counted where that modality is present.
        gate_lr_mult: learning-rate multiplier of the gates (``fusion: gate``).

    Raises:
        ValueError: see :class:`StitchFusionSegmentor`.
    """
    enc = create_backbone(
        backbone,
        pretrained=pretrained,
        drop_path_rate=drop_path_rate,
        **dict(backbone_kwargs or {}),
    )
    model = StitchFusionSegmentor(
        enc,
        modalities,
        num_classes,
        adapter=adapter,
        fusion=fusion,
        decoder_dim=decoder_dim or default_decoder_dim(backbone),
        adapter_hidden=adapter_hidden,
        adapter_dropout=adapter_dropout,
        norm_eps=norm_eps,
        missing=missing,
        modality_aux=modality_aux,
        gate_lr_mult=gate_lr_mult,
    )
    if freeze_backbone:
        model.freeze_backbone()
    return model


# --------------------------------------------------------------------------- released checkpoints
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
_RELEASE_MARK = re.compile(r"^backbone\.(feature_cross\.|block\d\.\d+\.adap)")


def release_to_fusionseg(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of a released StitchFusion state dict to ours (model-independent).

    Adapters ``backbone.block{i}.{j}.adap*`` -> ``adapters.block{i}.{j}.adap*``; FeatureCross
    ``backbone.feature_cross.{liner_fusion_layers, mix_ffn, channel_attns}.{s}`` ->
    ``fusion.{s}.{proj, mix_ffn, channel_attn}``; every other key (MiT encoder, decode head)
    is already ours.
    """
    return rename_keys(sd, _RELEASE_RULES)


_SHARED_TO_PAIR = {"adap_t": "adap_t_att12", "adap2_t": "adap_t_mlp12"}
_PAIR_TO_SHARED = {v: k for k, v in _SHARED_TO_PAIR.items()}
_ADAPTER_KEY = re.compile(r"^adapters\.block(\d)\.(\d+)\.(\w+?)\.(adapter_\w+\.\w+)$")


def _fit_to_model(sd: Mapping[str, Tensor], model: nn.Module | None) -> dict[str, Tensor]:
    """Adjust a (renamed) StitchFusion state dict to ``model``'s variant.

    * Sum-fusion model, checkpoint with ``fusion.*`` (the unused FeatureCross the release
      builds in every variant): those keys are dropped, with a warning.
    * Two modalities: a shared adapter and the single pairwise adapter are the same function
      (the release's note on ``Block_shared``); ``adap_t``/``adap2_t`` and
      ``adap_t_att12``/``adap_t_mlp12`` are renamed to whichever the model's stage uses.
    """
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
