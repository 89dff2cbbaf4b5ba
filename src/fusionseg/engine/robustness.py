"""Sensor-failure evaluation: one trained model under missing and noisy modalities.

The protocols of the multimodal segmentation robustness benchmark (Liao et al., "Benchmarking
Multi-modal Semantic Segmentation under Sensor Failures: Missing and Noisy Modality
Robustness", arXiv 2503.18445; evaluation scripts ``val_mm_EMM.py``, ``val_mm_RMM.py``,
``val_mm_NM.py`` of GitHub Chenfei-Liao/Multi-Modal-Semantic-Segmentation-Robustness-Benchmark):

* **EMM** (entire-missing modality): every non-empty subset of the model's modalities; the
  missing ones are removed the way the batch convention defines a missing modality (absent
  key, ``"present"`` column false) and each method fills them as it defines (its doc says
  how). Reported: mIoU per subset, the mean over subsets (``mIoU^Avg``) and the expectation
  under independent Bernoulli failures (``mIoU^E``) for p in {0.05, 0.1, 0.2}: subset weight
  ``p^k (1 - p)^(N - k)`` for ``k`` of ``N`` modalities missing, normalised over the subsets
  evaluated (the all-missing case is never evaluated).
* **RMM** (random-missing modality): the same subsets, but every "failed" modality keeps its
  key and loses a random fraction ``r`` in {0.25, 0.5, 0.75} of its pixels, set to 0 (the
  normalised mean). The script draws the mask per tensor element (channels independently);
  we draw it per pixel (all channels of a pixel together), as the paper describes a pixel
  loss.
* **NM** (noisy modality): every modality gets salt-and-pepper noise (density 0.05 / 0.1 / 0.2
  for low / mid / high: ``ceil(density * numel / 2)`` elements drawn with replacement set to
  the sample's maximum, as many to its minimum) and then additive Gaussian noise on the
  normalised input (std 0.1 / 0.2 / 0.5). The script's Gaussian lines sit in a string literal
  in the released file, so whether its published numbers include them is ambiguous: both are
  computed, ``mIoU`` with Gaussian noise (the paper's description) and
  ``mIoU_salt_pepper_only``. Departures from the script: extremes per sample (the script takes
  them over the whole batch tensor) and Gaussian noise on every modality (the script skips
  the event stream).
* **MAM** (misaligned modalities; ours, not in the benchmark): every modality but the first of
  the model's is rotated about the image centre and shifted relative to the first, which
  keeps the label; :data:`MISALIGN_LEVELS` gives the magnitudes (shift per axis as a fraction
  of the shorter image side, so in pixels at the evaluation resolution ``fraction *
  min(H, W)``; rotation in degrees). The signs of ``dx``, ``dy`` and the angle are drawn per
  sample and modality (the same signs at every level, so levels differ in magnitude only);
  bilinear resampling (:func:`fusionseg.data.transforms.misalign`), uncovered pixels set to
  0, the normalised mean. Reported: mIoU per level (level 0 = aligned = the plain
  evaluation).

Every random draw comes from a generator seeded by ``(seed, scenario, modality, sample id)``,
so the same checkpoint and data give the same numbers (and JSON bytes) in any batch size or
order. :class:`ScenarioEvaluator` accumulates a confusion matrix per scenario, overall and per
condition, in one pass over the data; :func:`protocol_results` turns it into the JSON of each
protocol.

Methods whose modality streams are independent until fusion
(:attr:`fusionseg.models.segmentor.Segmentor.independent_streams`: sum fusion, MLE-SAM) are
not re-encoded per subset: with a :class:`StreamReuse` (:func:`stream_reuse`), each batch's
modalities are encoded once and every EMM / RMM scenario (and the clean one) fuses and decodes
those features, encoding only the modalities the scenario corrupts (RMM's failed ones). The
logits are those of the per-scenario forward pass, bit for bit: where an encoder batches the
streams (sum fusion's ``batch_modalities``, MLE-SAM's trunk), a stream's maps can depend in
the last bits on which other streams share the batch (the matmul kernels block the rows of the
whole batch), so the first batch of every input shape checks that they do not (see
:meth:`ScenarioEvaluator.update`) and the shapes where they do are evaluated without reuse.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ..data.sample import PRESENT_KEY, drop_modalities
from ..data.transforms import misalign
from ..errors import ConfigError, DataError
from .metrics import confusion_metric, metrics_from_confusion

__all__ = [
    "FAILURE_PROBABILITIES",
    "MISALIGN_LEVELS",
    "NOISE_LEVELS",
    "PROTOCOLS",
    "RMM_RATIOS",
    "Scenario",
    "ScenarioEvaluator",
    "StreamReuse",
    "SubsetEvaluator",
    "bernoulli_expectation",
    "drop_random_pixels",
    "gaussian_noise",
    "misalign_signs",
    "modality_subsets",
    "protocol_markdown",
    "protocol_results",
    "protocol_scenarios",
    "salt_and_pepper",
    "stream_reuse",
    "subset_name",
]

PROTOCOLS = ("emm", "rmm", "nm", "mam")
#: Bernoulli failure probabilities of the expectation metric (the benchmark's p1..p3)
FAILURE_PROBABILITIES = (0.05, 0.1, 0.2)
#: fractions of pixels a failed modality loses under RMM
RMM_RATIOS = (0.25, 0.5, 0.75)
#: NM levels: (name, salt-and-pepper density, Gaussian std on the normalised input)
NOISE_LEVELS = (("low", 0.05, 0.1), ("mid", 0.1, 0.2), ("high", 0.2, 0.5))
#: MAM levels: (level, shift per axis as a fraction of the shorter image side, rotation in
#: degrees); at 128 px the shifts are 0, 0.64, 1.28, 2.56, 5.12 px, at 1024 px 0 to 41 px
MISALIGN_LEVELS = ((0, 0.0, 0.0), (1, 0.005, 0.5), (2, 0.01, 1.0), (3, 0.02, 2.0),
                   (4, 0.04, 4.0))


def modality_subsets(modalities: Sequence[str],
                     which: str | Sequence[Sequence[str]] = "all") -> list[tuple[str, ...]]:
    """Non-empty subsets of ``modalities`` for the missing-modality protocol.

    ``which="all"`` gives every non-empty subset (largest first, the full set first, then in
    ``itertools.combinations`` order); a list of lists is taken as given (each checked).

    Raises:
        ConfigError: a listed subset names a modality the model does not have, or is empty.
    """
    modalities = list(modalities)
    if which == "all":
        out: list[tuple[str, ...]] = []
        for r in range(len(modalities), 0, -1):
            out.extend(itertools.combinations(modalities, r))
        return out
    subsets = []
    for s in which:
        unknown = [m for m in s if m not in modalities]
        if unknown:
            raise ConfigError(f"missing-modality subset {list(s)} names {unknown}, not in "
                             f"{modalities}")
        if not s:
            raise ConfigError("a missing-modality subset must keep at least one modality")
        subsets.append(tuple(s))
    return subsets


def subset_name(subset: Sequence[str]) -> str:
    """``("rgb", "depth") -> "rgb+depth"``."""
    return "+".join(subset)


def bernoulli_expectation(values: dict[tuple[str, ...], float | None], n_modalities: int,
                          p: float) -> float | None:
    """Expected metric when each of ``n_modalities`` fails independently with probability ``p``.

    ``values`` maps the *missing* modalities of each evaluated subset to its metric; weights
    ``p^k (1 - p)^(N - k)`` are normalised over the entries with a value (arXiv 2503.18445,
    ``mIoU^E``; ``val_mm_EMM.py``). ``None`` when no entry has a value.
    """
    num = den = 0.0
    for missing, v in values.items():
        if v is None or v != v:
            continue
        k = len(missing)
        w = p ** k * (1 - p) ** (n_modalities - k)
        num += w * v
        den += w
    return num / den if den > 0 else None


# ----------------------------------------------------------------------------- corruptions
def _generator(*key: object) -> torch.Generator:
    """A CPU generator seeded by a stable hash of ``key`` (same seed in every process)."""
    return torch.Generator().manual_seed(zlib.crc32("|".join(map(str, key)).encode()))


def drop_random_pixels(x: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Set a random fraction ``ratio`` of the pixels of ``x [C, H, W]`` to 0 (every channel of
    a chosen pixel; each pixel is chosen independently with probability ``ratio``).

    Returns a new tensor; ``x`` is not modified.
    """
    keep = torch.rand(x.shape[-2:], generator=generator) >= ratio
    return x * keep.to(x.dtype)


def salt_and_pepper(x: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper noise on ``x [C, H, W]``: ``ceil(density * numel / 2)`` elements drawn
    uniformly with replacement are set to ``x.max()``, as many (drawn next) to ``x.min()``
    (``add_salt_and_pepper_noise`` of the benchmark's ``val_mm_NM.py``, per sample)."""
    out = x.clone()
    n = math.ceil(density * x.numel() * 0.5)
    hi, lo = x.max(), x.min()
    flat = out.view(-1)
    flat[torch.randint(0, x.numel(), (n,), generator=generator)] = hi
    flat[torch.randint(0, x.numel(), (n,), generator=generator)] = lo
    return out


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``x + N(0, std^2)`` elementwise (``std`` in units of the normalised input)."""
    return x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * std


def misalign_signs(generator: torch.Generator) -> tuple[int, int, int]:
    """Signs (each -1 or +1) of ``dx``, ``dy`` and the rotation of one MAM draw."""
    sx, sy, sr = (torch.randint(0, 2, (3,), generator=generator) * 2 - 1).tolist()
    return sx, sy, sr


@dataclass(frozen=True)
class Scenario:
    """One evaluation condition of a protocol.

    Attributes:
        key: unique name, e.g. ``"emm/rgb+depth"``, ``"rmm/0.5/rgb"``, ``"nm/low"``.
        present: modalities left intact.
        missing: modalities removed (EMM) or losing ``ratio`` of their pixels (RMM).
        ratio: RMM pixel fraction; ``None`` = the missing ones are removed entirely.
        density, std: NM salt-and-pepper density and Gaussian std (0 = none), on every
            present modality.
        shift, rotation: MAM shift per axis (fraction of the shorter image side) and rotation
            (degrees) of every modality but the first (0 = aligned).
    """

    key: str
    present: tuple[str, ...]
    missing: tuple[str, ...] = ()
    ratio: float | None = None
    density: float = 0.0
    std: float = 0.0
    shift: float = 0.0
    rotation: float = 0.0

    @property
    def compute_key(self) -> str:
        """Scenarios that feed the model identical inputs share this key (computed once)."""
        if (not self.missing and self.density == 0 and self.std == 0 and self.shift == 0
                and self.rotation == 0):
            return "clean"
        return self.key

    @property
    def reuses_streams(self) -> bool:
        """True for the clean, EMM and RMM scenarios: each modality is fed unchanged, removed,
        or (RMM) corrupted on its own, so independent streams' features can be reused."""
        return self.density == 0 and self.std == 0 and self.shift == 0 and self.rotation == 0

    def apply(self, batch: dict, modalities: Sequence[str], sample_ids: Sequence[str],
              seed: int = 0) -> dict:
        """The batch as this scenario feeds it (CPU tensors; ``batch`` is not modified).

        Args:
            batch: a collated batch (modality tensors ``[B, C, H, W]``, optional ``present``).
            modalities: the model's modalities (column order of ``present``).
            sample_ids: one stable id per sample (the seed of its random draws).
        """
        if self.ratio is None and self.missing:
            batch = drop_modalities(batch, self.present, modalities=modalities)
        if self.shift != 0 or self.rotation != 0:
            return self._misalign(batch, modalities, sample_ids, seed)
        corrupt = list(self.missing) if self.ratio is not None else []
        noisy = list(self.present) if (self.density > 0 or self.std > 0) else []
        if not corrupt and not noisy:
            return batch
        out = dict(batch)
        for m in dict.fromkeys(corrupt + noisy):
            if m not in batch:
                continue
            xs = []
            for j, x in enumerate(batch[m]):
                g = _generator(seed, self.key, m, sample_ids[j])
                if m in corrupt:
                    x = drop_random_pixels(x, self.ratio, g)
                if m in noisy:
                    if self.density > 0:
                        x = salt_and_pepper(x, self.density, g)
                    if self.std > 0:
                        x = gaussian_noise(x, self.std, g)
                xs.append(x)
            out[m] = torch.stack(xs)
        return out

    def _misalign(self, batch: dict, modalities: Sequence[str], sample_ids: Sequence[str],
                  seed: int) -> dict:
        """MAM: every modality but ``modalities[0]`` rotated by ``+-rotation`` degrees and
        shifted by ``+-shift * min(H, W)`` pixels per axis, signs from a generator seeded by
        ``(seed, "mam", modality, sample id)``; uncovered pixels 0."""
        out = dict(batch)
        for m in modalities[1:]:
            if m not in batch:
                continue
            xs = []
            for j, x in enumerate(batch[m]):
                sx, sy, sr = misalign_signs(_generator(seed, "mam", m, sample_ids[j]))
                px = self.shift * min(x.shape[-2:])
                xs.append(misalign(x, (sx * px, sy * px), sr * self.rotation, fill=0.0))
            out[m] = torch.stack(xs)
        return out


def protocol_scenarios(modalities: Sequence[str], protocols: Iterable[str]) -> list[Scenario]:
    """The scenarios of ``protocols`` (``"emm"``, ``"rmm"``, ``"nm"``, ``"mam"``) for a model's
    modalities (MAM: one per :data:`MISALIGN_LEVELS` entry, key ``"mam/{level}"``).

    Raises:
        ConfigError: an unknown protocol name.
    """
    mods = list(modalities)
    out: list[Scenario] = []
    for proto in protocols:
        if proto not in PROTOCOLS:
            raise ConfigError(f"unknown robustness protocol {proto!r}; choose from "
                             f"{', '.join(PROTOCOLS)} or all")
        if proto in ("emm", "rmm"):
            ratios = [None] if proto == "emm" else list(RMM_RATIOS)
            for r in ratios:
                for s in modality_subsets(mods):
                    missing = tuple(m for m in mods if m not in s)
                    key = f"emm/{subset_name(s)}" if r is None else f"rmm/{r}/{subset_name(s)}"
                    out.append(Scenario(key, tuple(s), missing, ratio=r))
        elif proto == "mam":
            for level, shift, rotation in MISALIGN_LEVELS:
                out.append(Scenario(f"mam/{level}", tuple(mods), shift=shift, rotation=rotation))
        else:
            for name, density, std in NOISE_LEVELS:
                out.append(Scenario(f"nm/{name}", tuple(mods), density=density, std=std))
                out.append(Scenario(f"nm/{name}/salt_pepper_only", tuple(mods),
                                    density=density))
    return out


@dataclass(frozen=True)
class StreamReuse:
    """Per-modality encoding and decoding of a model with independent streams.

    Attributes:
        encode: ``batch -> {modality: features}`` (``Segmentor.encode_streams``, in the
            evaluation's precision).
        predict: ``(batch, features) -> logits [B, K, H, W]`` (float32): the fusion and heads
            on the features of ``batch``'s modalities (``Segmentor.forward_from_streams``).
    """

    encode: Callable[[dict], dict[str, Any]]
    predict: Callable[[dict, Mapping[str, Any]], torch.Tensor]


def _same(a: Any, b: Any) -> bool:
    """Bitwise equality of two features (tensors, or lists / tuples of them)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    return False


def streams_compose(reuse: StreamReuse, batch: dict, modalities: Sequence[str],
                    streams: Mapping[str, Any]) -> bool:
    """Whether each modality's features in ``streams`` (``reuse.encode(batch)``) are the
    bits ``reuse.encode`` gives for any other set of ``batch``'s modalities.

    The encoder batch of a subset of ``k`` modalities puts each at one of ``k`` positions;
    the float operations a kernel runs on a row depend on the batch's shape and the row's
    position, not on the values. So it suffices that each modality alone, and each position
    of the batches of the first ``k`` modalities (``k = 2 .. N - 1``), give the features of
    the full batch: ``N + (N - 1) N / 2 - 1`` modality batches of encoding, once per shape.
    ``False`` also when a probe batch cannot be encoded (a sample with none of its modalities
    present).
    """
    mods = [m for m in modalities if m in batch]
    probes = [[m] for m in mods] + [mods[:k] for k in range(2, len(mods))]
    for keep in probes:
        try:
            part = reuse.encode(drop_modalities(batch, keep, modalities=modalities))
        except DataError:
            return False
        if any(m not in streams or not _same(f, streams[m]) for m, f in part.items()):
            return False
    return True


def stream_reuse(model: torch.nn.Module, inference: Mapping[str, Any] | None = None,
                 context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
                 ) -> StreamReuse | None:
    """A :class:`StreamReuse` of ``model`` (in eval mode), or ``None`` where there is none.

    ``None`` (every scenario then runs the evaluation's ``predict``) when the model does not
    declare :attr:`~fusionseg.models.segmentor.Segmentor.independent_streams`, or when the
    inference is not one plain forward pass: ``inference`` (the keywords of
    :func:`fusionseg.models.inference_modes.predict_logits`) with a ``mode`` other than
    ``"whole"``, ``scales`` other than ``[1.0]`` or ``flip``. Under those, ``predict_logits``
    is ``logits_of(model(batch)).float()``, which :attr:`StreamReuse.predict` reproduces bit
    for bit as long as each stream's features do not depend on the other streams in its
    encoder batch; :meth:`ScenarioEvaluator.update` checks that once per input shape.

    Args:
        context: a context manager factory entered around every model call (the evaluation's
            autocast).
    """
    if not getattr(model, "independent_streams", False):
        return None
    if inference is not None and (
            inference.get("mode", "whole") != "whole"
            or [float(s) for s in inference.get("scales", (1.0,))] != [1.0]
            or inference.get("flip", False)):
        return None

    def encode(batch: dict) -> dict[str, Any]:
        with context():
            return model.encode_streams(batch)

    def predict(batch: dict, streams: Mapping[str, Any]) -> torch.Tensor:
        with context():
            logits = model.forward_from_streams(batch, streams)
        return logits.float()

    return StreamReuse(encode, predict)


def _to(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class ScenarioEvaluator:
    """Confusion matrices of one model over scenarios, overall and per condition.

    Args:
        modalities: the model's modalities (the batch's ``"present"`` column order).
        scenarios: what to evaluate; scenarios with the same :attr:`Scenario.compute_key` are
            run once.
        num_classes, ignore_index: of the dataset.
        per_condition: also accumulate per ``meta["condition"]``.
        seed: seed of the random corruptions.
    """

    def __init__(self, modalities: Sequence[str], scenarios: Sequence[Scenario],
                 num_classes: int, ignore_index: int = 255, per_condition: bool = True,
                 seed: int = 0) -> None:
        self.modalities = list(modalities)
        self.scenarios = {s.key: s for s in scenarios}
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.per_condition, self.seed = per_condition, seed
        self._compute = {}
        for s in scenarios:
            self._compute.setdefault(s.compute_key, s)
        self.cms = {k: confusion_metric(num_classes, ignore_index) for k in self._compute}
        self.cond_cms: dict[str, dict[str, Any]] = {k: {} for k in self._compute}
        self._seen = 0
        #: per input shape: whether stream reuse gives the per-scenario bits there
        self.reuse_checked: dict[tuple, bool] = {}
        #: scenarios that can share the clean streams (reuse pays only for two or more)
        self.reusable = [k for k, s in self._compute.items() if s.reuses_streams]

    def update(self, batch: dict, predict: Callable[[dict], torch.Tensor],
               device: torch.device | str = "cpu", reuse: StreamReuse | None = None) -> None:
        """Run ``predict(batch') -> logits [B, K, H, W]`` for every scenario's version of
        ``batch`` (moved to ``device``) and accumulate against ``batch["label"]``.

        With ``reuse`` (:func:`stream_reuse`), the scenarios that allow it
        (:attr:`Scenario.reuses_streams`) give the same logits from ``batch``'s modalities
        encoded once (``reuse.encode``) plus the modalities the scenario corrupts, encoded
        for it. The first batch of each input shape checks that the streams' features do not
        depend on their encoder batch (:func:`streams_compose`); where they do (a warning says
        so), and for a scenario whose corrupted modalities cannot be encoded on their own (a
        sample with none of them present), ``predict`` runs; so it does for every scenario
        when fewer than two scenarios can share the features (a plain evaluation)."""
        label = batch["label"]
        metas = batch.get("meta") or []
        b = label.shape[0]
        ids = [str(m.get("id", self._seen + j)) if isinstance(m, dict) else str(self._seen + j)
               for j, m in enumerate(metas)] or [str(self._seen + j) for j in range(b)]
        self._seen += b
        streams: dict[str, Any] | None = None
        if len(self.reusable) < 2:
            reuse = None
        for key, s in self._compute.items():
            sub = s.apply(batch, self.modalities, ids, self.seed)
            changed = [m for m in self.modalities if m in sub and sub[m] is not batch.get(m)]
            sub = _to(sub, device)
            logits = None
            if reuse is not None and s.reuses_streams:
                if streams is None:
                    streams = self._clean_streams(_to(batch, device), reuse)
                if streams:
                    logits = self._reused_logits(sub, changed, streams, reuse)
            pred = (predict(sub) if logits is None else logits).argmax(1).cpu()
            self.cms[key].update(pred, label)
            if not self.per_condition:
                continue
            for j, m in enumerate(metas):
                c = (m.get("condition") if isinstance(m, dict) else None) or "all"
                if c not in self.cond_cms[key]:
                    self.cond_cms[key][c] = confusion_metric(self.num_classes, self.ignore_index)
                self.cond_cms[key][c].update(pred[j:j + 1], label[j:j + 1])

    def _clean_streams(self, batch: dict, reuse: StreamReuse) -> dict[str, Any]:
        """``reuse.encode(batch)``, or ``{}`` (no reuse) for an input shape where the
        features depend on the encoder batch (checked on its first batch)."""
        shape = tuple((m, tuple(batch[m].shape), str(batch[m].dtype)) for m in self.modalities
                      if isinstance(batch.get(m), torch.Tensor))
        if self.reuse_checked.get(shape) is False:
            return {}
        streams = reuse.encode(batch)
        if shape not in self.reuse_checked:
            ok = streams_compose(reuse, batch, self.modalities, streams)
            self.reuse_checked[shape] = ok
            if not ok:
                warnings.warn(f"inputs {shape}: a modality's features depend on the other "
                              "modalities in the encoder batch (or a probe cannot run); "
                              "evaluating every missing-modality scenario with its own "
                              "forward pass", stacklevel=3)
                return {}
        return streams

    @staticmethod
    def _reused_logits(sub: dict, changed: Sequence[str], streams: dict[str, Any],
                       reuse: StreamReuse) -> torch.Tensor | None:
        """Logits of the scenario batch ``sub`` from the clean ``streams`` and the modalities
        ``changed`` by the scenario encoded anew; ``None`` when those cannot be encoded
        without the others (a sample with none of them present)."""
        if changed:
            only = {m: sub[m] for m in changed}
            if PRESENT_KEY in sub:
                only[PRESENT_KEY] = sub[PRESENT_KEY]
            try:
                streams = {**streams, **reuse.encode(only)}
            except DataError:
                return None
        return reuse.predict(sub, streams)

    def metrics(self, key: str, miou: str = "nanmean",
                ignore_classes: Sequence[int] = ()) -> dict[str, Any]:
        """Metrics of :func:`metrics_from_confusion` (percent) of scenario ``key``, with
        ``"per_condition": {condition: metrics}``.

        Raises:
            KeyError: ``key`` is not a scenario of this evaluator.
        """
        k = self.scenarios[key].compute_key
        res = metrics_from_confusion(self.cms[k].compute(), miou, list(ignore_classes))
        res["per_condition"] = {
            c: metrics_from_confusion(cm.compute(), miou, list(ignore_classes))
            for c, cm in sorted(self.cond_cms[k].items())
        }
        return res


class SubsetEvaluator(ScenarioEvaluator):
    """:class:`ScenarioEvaluator` over modality subsets (the missing ones removed), keyed by
    the subset tuple (``eval --missing``).

    Args:
        modalities: the model's modalities; subsets: tuples of them (see
            :func:`modality_subsets`).
        extra_scenarios: further scenarios (e.g. :func:`protocol_scenarios`) run in the same
            pass; the rest as :class:`ScenarioEvaluator`.
    """

    def __init__(self, modalities: Sequence[str], subsets: Sequence[Sequence[str]],
                 num_classes: int, ignore_index: int = 255, per_condition: bool = True,
                 extra_scenarios: Sequence[Scenario] = (), seed: int = 0) -> None:
        mods = list(modalities)
        scenarios = [Scenario(f"emm/{subset_name(s)}", tuple(s),
                              tuple(m for m in mods if m not in s)) for s in subsets]
        keys = {s.key for s in scenarios}
        scenarios += [s for s in extra_scenarios if s.key not in keys]
        super().__init__(mods, scenarios, num_classes, ignore_index, per_condition, seed)
        self.subsets = [tuple(s) for s in subsets]

    def metrics(self, subset: Sequence[str] | str, miou: str = "nanmean",
                ignore_classes: Sequence[int] = ()) -> dict[str, Any]:
        """Metrics of ``subset`` (a tuple of modalities, or a scenario key)."""
        key = subset if isinstance(subset, str) else f"emm/{subset_name(subset)}"
        return super().metrics(key, miou, ignore_classes)

    def table(self, miou: str = "nanmean", ignore_classes: Sequence[int] = (),
              subsets: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
        """``{"rgb+depth": {"mIoU", "OA", "per_condition": {cond: mIoU}}, ...}`` for
        ``subsets`` (default: all evaluated)."""
        out = {}
        for s in (self.subsets if subsets is None else [tuple(x) for x in subsets]):
            r = self.metrics(s, miou, ignore_classes)
            out[subset_name(s)] = {
                "mIoU": r["mIoU"], "OA": r["OA"],
                "per_condition": {c: v["mIoU"] for c, v in r["per_condition"].items()},
            }
        return out


# ----------------------------------------------------------------------------- results
def _num(v: float | None) -> float | None:
    """A metric for JSON: ``None`` for NaN, rounded to 4 decimals (stable bytes)."""
    if v is None or v != v:
        return None
    return round(float(v), 4)


def _subset_block(ev: ScenarioEvaluator, prefix: str, miou: str,
                  ignore_classes: Sequence[int]) -> dict[str, Any]:
    n = len(ev.modalities)
    entries, by_missing = [], {}
    for s in modality_subsets(ev.modalities):
        r = ev.metrics(f"{prefix}{subset_name(s)}", miou, ignore_classes)
        missing = [m for m in ev.modalities if m not in s]
        entries.append({"present": list(s), "missing": missing, "mIoU": _num(r["mIoU"]),
                        "OA": _num(r["OA"]), "mF1": _num(r["mF1"]),
                        "per_condition": {c: _num(v["mIoU"])
                                          for c, v in r["per_condition"].items()}})
        by_missing[tuple(missing)] = _num(r["mIoU"])
    vals = [v for v in by_missing.values() if v is not None]
    return {
        "subsets": entries,
        "mean": _num(sum(vals) / len(vals)) if vals else None,
        "expectation": {str(p): _num(bernoulli_expectation(by_missing, n, p))
                        for p in FAILURE_PROBABILITIES},
    }


def protocol_results(ev: ScenarioEvaluator, protocol: str, header: dict[str, Any],
                     miou: str = "nanmean", ignore_classes: Sequence[int] = ()) -> dict[str, Any]:
    """The JSON of one protocol from an evaluator that ran its scenarios.

    Returns (``header`` keys first, then):

    * EMM: ``{"protocol": "emm", "subsets": [{"present", "missing", "mIoU", "OA", "mF1",
      "per_condition"}, ...], "mean": ..., "expectation": {"0.05": ..., "0.1": ..., "0.2":
      ...}}`` (subsets full set first, then by size);
    * RMM: ``{"protocol": "rmm", "ratios": [{"r": 0.25, "subsets", "mean", "expectation"},
      ...]}`` (``missing`` = the modalities that lost pixels);
    * NM: ``{"protocol": "nm", "clean": mIoU, "levels": [{"level", "density", "std", "mIoU",
      "OA", "mIoU_salt_pepper_only", "OA_salt_pepper_only"}, ...]}``;
    * MAM: ``{"protocol": "mam", "reference": first modality, "moved": [the others],
      "levels": [{"level", "shift", "rotation", "mIoU", "OA", "mF1", "per_condition"}, ...]}``
      (``shift``: fraction of the shorter image side per axis; ``rotation``: degrees).

    Metrics in percent, ``None`` (JSON ``null``) where undefined.
    """
    out: dict[str, Any] = {"protocol": protocol, **header}
    if protocol == "emm":
        out.update(_subset_block(ev, "emm/", miou, ignore_classes))
    elif protocol == "rmm":
        out["ratios"] = [{"r": r, **_subset_block(ev, f"rmm/{r}/", miou, ignore_classes)}
                         for r in RMM_RATIOS]
    elif protocol == "nm":
        clean_key = next((k for k, s in ev.scenarios.items() if s.compute_key == "clean"), None)
        out["clean"] = (_num(ev.metrics(clean_key, miou, ignore_classes)["mIoU"])
                        if clean_key else None)
        levels = []
        for name, density, std in NOISE_LEVELS:
            both = ev.metrics(f"nm/{name}", miou, ignore_classes)
            sp = ev.metrics(f"nm/{name}/salt_pepper_only", miou, ignore_classes)
            levels.append({"level": name, "density": density, "std": std,
                           "mIoU": _num(both["mIoU"]), "OA": _num(both["OA"]),
                           "mIoU_salt_pepper_only": _num(sp["mIoU"]),
                           "OA_salt_pepper_only": _num(sp["OA"])})
        out["levels"] = levels
    elif protocol == "mam":
        out["reference"] = ev.modalities[0]
        out["moved"] = list(ev.modalities[1:])
        levels = []
        for level, shift, rotation in MISALIGN_LEVELS:
            r = ev.metrics(f"mam/{level}", miou, ignore_classes)
            levels.append({"level": level, "shift": shift, "rotation": rotation,
                           "mIoU": _num(r["mIoU"]), "OA": _num(r["OA"]), "mF1": _num(r["mF1"]),
                           "per_condition": {c: _num(v["mIoU"])
                                             for c, v in r["per_condition"].items()}})
        out["levels"] = levels
    else:
        raise ValueError(f"unknown robustness protocol {protocol!r}")
    return out


def _md(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def protocol_markdown(res: dict[str, Any]) -> str:
    """A Markdown report of one protocol's JSON (:func:`protocol_results`)."""
    proto = res["protocol"]
    title = {"emm": "Entire-missing modality (EMM)", "rmm": "Random-missing modality (RMM)",
             "nm": "Noisy modality (NM)", "mam": "Misaligned modalities (MAM)"}[proto]
    lines = [f"# {title}", "",
             f"`{res.get('checkpoint', '')}` on {res.get('dataset', '')} "
             f"{res.get('split', '')}, modalities {subset_name(res.get('modalities', []))}, "
             f"seed {res.get('seed', 0)}; mIoU in percent.", ""]
    ps = [str(p) for p in FAILURE_PROBABILITIES]
    if proto == "emm":
        lines += ["| present | missing | mIoU | OA | mF1 |", "| --- | --- | --- | --- | --- |"]
        for e in res["subsets"]:
            lines.append(f"| {subset_name(e['present'])} | {subset_name(e['missing']) or '-'} "
                         f"| {_md(e['mIoU'])} | {_md(e['OA'])} | {_md(e['mF1'])} |")
        lines += ["", "| mean | " + " | ".join(f"E[p={p}]" for p in ps) + " |",
                  "| --- | " + " | ".join("---" for _ in ps) + " |",
                  f"| {_md(res['mean'])} | "
                  + " | ".join(_md(res["expectation"][p]) for p in ps) + " |"]
    elif proto == "rmm":
        rs = res["ratios"]
        lines += ["| intact | failed | " + " | ".join(f"r={b['r']}" for b in rs) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in rs) + " |"]
        for i, e in enumerate(rs[0]["subsets"]):
            lines.append(f"| {subset_name(e['present'])} | {subset_name(e['missing']) or '-'} | "
                         + " | ".join(_md(b["subsets"][i]["mIoU"]) for b in rs) + " |")
        lines.append("| **mean** | | " + " | ".join(_md(b["mean"]) for b in rs) + " |")
        for p in ps:
            lines.append(f"| **E[p={p}]** | | "
                         + " | ".join(_md(b["expectation"][p]) for b in rs) + " |")
    elif proto == "mam":
        lines += [f"{subset_name(res.get('moved', []))} moved against {res.get('reference')} "
                  "(and the label); shift per axis in percent of the shorter image side.", "",
                  "| level | shift (%) | rotation (deg) | mIoU | OA | mF1 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for lv in res["levels"]:
            lines.append(f"| {lv['level']} | {lv['shift'] * 100:g} | {lv['rotation']:g} "
                         f"| {_md(lv['mIoU'])} | {_md(lv['OA'])} | {_md(lv['mF1'])} |")
    else:
        lines += ["| level | s&p density | Gaussian std | mIoU (s&p + Gaussian) | "
                  "mIoU (s&p only) |", "| --- | --- | --- | --- | --- |",
                  f"| clean | 0 | 0 | {_md(res['clean'])} | {_md(res['clean'])} |"]
        for lv in res["levels"]:
            lines.append(f"| {lv['level']} | {lv['density']} | {lv['std']} | {_md(lv['mIoU'])} "
                         f"| {_md(lv['mIoU_salt_pepper_only'])} |")
    return "\n".join(lines) + "\n"
