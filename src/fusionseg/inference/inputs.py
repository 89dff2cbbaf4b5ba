"""Prediction inputs: ``--input`` values -> a dataset of samples read with the model's specs.

Input forms (one ``--input`` each; see ``docs/predict.md``):

- ``ROOT``: a dataset root in the layout of the checkpoint's dataset (e.g. DELIVER /
  synthcity), read through the same dataset class as training (``split`` picks the split);
- ``DIR`` holding ``DIR/{modality}/{stem}.*`` (one sub-folder per modality of the model, and
  optionally ``DIR/label/{stem}.png`` with class ids in channel 0). A modality folder that is
  absent is a missing modality (its key is left out), so a model can run on RGB alone;
- ``MODALITY=SOURCE[:I,J,...]``: ``SOURCE`` is a folder (its image files), a glob
  (``*``/``?``/``[``; ``**`` recurses) or one file; the optional ``:I,J`` suffix selects the
  file's channels by **0-based** index (the MFNet packing, RGB + thermal in one RGBA PNG:
  ``rgb=DIR:0,1,2 thermal=DIR:3``). ``label=SOURCE`` gives labels. Any number of these may be
  combined, also with one ``DIR`` (an explicit modality replaces ``DIR/{modality}``).

Files are matched across modalities by file stem (``a.png`` in one source goes with
``a.tif`` in another); a stem without a partner in every given modality is a
:class:`~fusionseg.data.io.DataError` naming the modality and the stems.

A file that does not fit the spec the model was trained on (an 8-bit depth PNG for a model
trained on 16-bit millimetres, a wrong channel count) is a ``DataError`` naming the file, the
modality, the problem, the trained spec and the override that would read it
(:mod:`fusionseg.inference.specs`).
"""

from __future__ import annotations

import glob as globlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.io import IMAGE_EXTENSIONS, DataError, bit_depth_of, read_image
from ..data.modalities import ModalitySpec
from .specs import describe_spec, validated_spec

__all__ = [
    "LABEL",
    "FileInput",
    "InputSource",
    "match_stems",
    "open_inputs",
    "parse_input",
    "select_channels",
    "source_files",
]

#: the input / sample key of labels
LABEL = "label"
_GLOB_CHARS = re.compile(r"[*?\[]")
_CHANNELS = re.compile(r"^(?P<path>.+):(?P<idx>\d+(?:,\d+)*)$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class InputSource:
    """One ``--input``: ``modality=None`` for a dataset root / ``DIR/{modality}`` folder.

    Attributes:
        modality: a model modality, ``"label"``, or ``None``.
        path: folder, glob or file as given.
        channels: 0-based file channel indices (the ``:I,J`` suffix) or ``None``.
    """

    modality: str | None
    path: str
    channels: tuple[int, ...] | None = None


def parse_input(text: str | Path) -> InputSource:
    """Parse one input: ``PATH`` or ``MODALITY=SOURCE[:I,J,...]`` (0-based channels).

    A trailing ``:digits[,digits]`` is always a channel selection. The text before a first
    ``=`` counts as a modality name only if it is an identifier.

    Raises:
        DataError: an empty source, or a channel selection on a plain ``PATH``.
    """
    text = str(text)
    name, sep, rest = text.partition("=")
    if not sep or not _NAME.match(name):
        if _CHANNELS.match(text) and not Path(text).exists():
            raise DataError(f"input {text!r}: a channel selection needs a modality, e.g. "
                            "thermal=DIR:3")
        return InputSource(None, text)
    m = _CHANNELS.match(rest)
    path, channels = (m["path"], tuple(int(i) for i in m["idx"].split(","))) if m else (rest,
                                                                                      None)
    if not path:
        raise DataError(f"input {text!r}: no folder, glob or file after '='", modality=name)
    if channels is not None and name == LABEL:
        raise DataError(f"input {text!r}: labels take channel 0; no channel selection",
                        modality=name)
    return InputSource(name, path, channels)


def source_files(source: InputSource) -> dict[str, Path]:
    """``{stem: file}`` of a per-modality source (a folder, a glob, or one file).

    Only files with an image extension (``.png .jpg .jpeg .tif .tiff .npy .npz .bmp``) count.

    Raises:
        DataError: nothing matches, or two files share a stem (naming modality and files).
    """
    text, m = source.path, source.modality
    p = Path(text)
    if _GLOB_CHARS.search(text):
        files = [Path(f) for f in sorted(globlib.glob(text, recursive=True))]
    elif p.is_dir():
        files = sorted(p.iterdir())
    elif p.is_file():
        files = [p]
    else:
        raise DataError("no such folder, file or glob match", path=text, modality=m)
    files = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise DataError(f"no image files ({' '.join(IMAGE_EXTENSIONS)})", path=text,
                        modality=m)
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"two files with stem '{f.stem}': {out[f.stem]} and {f}; stems "
                            "match files across modalities, so they must be unique",
                            path=text, modality=m)
        out[f.stem] = f
    return out


def _some(stems: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(stems[:n])
    return shown + (f" (+{len(stems) - n} more)" if len(stems) > n else "")


def match_stems(files: Mapping[str, Mapping[str, Path]]) -> list[str]:
    """The sorted stems present in every modality of ``files`` (modality -> stem -> file).

    Raises:
        DataError: some stems lack a partner; the message names, per modality, the stems it
            has no file for.
    """
    if not files:
        raise DataError("no inputs given")
    union = sorted(set().union(*(set(f) for f in files.values())))
    problems, first = [], None
    for modality, by_stem in files.items():
        lacking = [s for s in union if s not in by_stem]
        if lacking:
            first = first or modality
            problems.append(f"'{modality}' has no file for stem(s) {_some(lacking)}")
    if problems:
        raise DataError("samples are matched by file stem across modalities; "
                        + "; ".join(problems), modality=first)
    return union


class FileInput(torch.utils.data.Dataset):
    """Samples from per-modality file lists matched by stem, read with given specs.

    Args:
        files: modality (or ``"label"``) -> ``{stem: file}`` (see :func:`source_files`).
        specs: modality -> ModalitySpec (the training run's, see
            :func:`~fusionseg.inference.specs.training_specs`).
        channels: modality -> 0-based file channel indices replacing the spec's
            ``file_channels`` (their count must be the spec's ``channels`` or ``repeat_to``).
        transform: applied to each sample (e.g. the eval transforms).

    Samples: ``{modality: float32 [C, H, W], "label": int64 [H, W] (channel 0 of the label
    file), "meta": {"id": stem, "condition": None, "paths": {...}}}``, stems sorted.

    Raises:
        DataError: at construction, unmatched stems, a modality without a spec, a channel
            selection of the wrong length; per sample, a file that does not fit its spec
            (naming file, modality, problem, the trained spec and the override that reads
            it), modalities of different sizes.
    """

    def __init__(self, files: Mapping[str, Mapping[str, Path]],
                 specs: Mapping[str, ModalitySpec],
                 channels: Mapping[str, tuple[int, ...]] | None = None, transform=None):
        self.files = {k: dict(v) for k, v in files.items()}
        self.modalities = [m for m in self.files if m != LABEL]
        if not self.modalities:
            raise DataError("no modality input given (only labels)")
        lacking = [m for m in self.modalities if m not in specs]
        if lacking:
            raise DataError(f"no spec for modality '{lacking[0]}'", modality=lacking[0])
        self.specs = {m: select_channels(specs[m], (channels or {}).get(m))
                      for m in self.modalities}
        self.stems = match_stems(self.files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, i: int) -> dict:
        stem = self.stems[i]
        sample: dict = {"meta": {"id": stem, "condition": None, "paths": {}}}
        for m in self.modalities:
            path = self.files[m][stem]
            sample[m] = _read(self.specs[m], path)
            sample["meta"]["paths"][m] = str(path)
        sizes = {m: tuple(sample[m].shape[-2:]) for m in self.modalities}
        if len(set(sizes.values())) > 1:
            raise DataError(f"sample '{stem}': modality sizes differ "
                            f"({', '.join(f'{m} {h}x{w}' for m, (h, w) in sizes.items())})",
                            path=self.files[self.modalities[0]][stem])
        if LABEL in self.files:
            path = self.files[LABEL][stem]
            raw = read_image(path, modality=LABEL)
            sample[LABEL] = torch.from_numpy(raw[..., 0].astype(np.int64))
            sample["meta"]["paths"][LABEL] = str(path)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def select_channels(spec: ModalitySpec, channels: tuple[int, ...] | None) -> ModalitySpec:
    """``spec`` reading the file's 0-based ``channels`` (an input's ``:I,J`` suffix) instead
    of its ``file_channels``; ``None`` returns it unchanged.

    Raises:
        DataError: the selection's length is neither the spec's ``channels`` nor its
            ``repeat_to``.
    """
    if channels is None:
        return spec
    counts = [spec.channels] + ([spec.repeat_to] if spec.repeat_to else [])
    if len(channels) not in counts:
        raise DataError(f"the input selects {len(channels)} channel(s) {list(channels)} but "
                        f"the model's '{spec.name}' takes "
                        f"{' or '.join(map(str, sorted(set(counts))))}", modality=spec.name)
    return validated_spec(spec.name, {**spec.model_dump(), "file_channels": list(channels),
                                      "channels": len(channels)}, "channel selection")


def _read(spec: ModalitySpec, path: Path) -> torch.Tensor:
    """``spec.load(path)`` whose fit errors also name the trained spec and the fix."""
    array = read_image(path, modality=spec.name, key=spec.npz_key)
    try:
        return spec.from_array(array, path=path)
    except DataError as err:
        m = spec.name
        if err.problem.startswith("wrong bit depth"):
            hint = (f"if this {bit_depth_of(array)}-bit file is right, say how to read it, e.g. "
                    f"--spec {m}.bit_depth={bit_depth_of(array)} --spec {m}.scale=<unit per "
                    "count> (or auto for [0, 1])")
        elif err.problem.startswith("wrong channel count"):
            hint = (f"select the file's channels with {m}=PATH:I[,J] (0-based) or "
                    f"--spec {m}.file_channels=null")
        else:
            raise
        raise DataError(f"{err.problem}; the model was trained on {describe_spec(spec)}; "
                        f"{hint}", path=path, modality=m) from None


def _is_modality_folder(root: Path, modalities: Sequence[str]) -> bool:
    return any((root / m).is_dir() for m in modalities) and not (root / "img").is_dir()


def open_inputs(inputs: str | Path | Sequence[str | Path], cfg: Config,
                specs: Mapping[str, ModalitySpec], split: str | None = None,
                dataset_specs: Mapping[str, Any] | None = None,
                check_files: bool = True) -> torch.utils.data.Dataset:
    """The dataset of samples for the given ``--input`` values (forms: module docstring).

    Args:
        inputs: one input or a list of them.
        cfg: the run config (model modalities; dataset name and options for a dataset root).
        specs: the specs to read per-modality / folder inputs with
            (:func:`~fusionseg.inference.specs.training_specs`).
        split: split of a dataset root (default ``cfg.data.val_split``).
        dataset_specs: the ``specs`` option given to the dataset class for a dataset root
            (default: ``specs``).
        check_files: False builds a dataset root with ``check_files=False`` (where the class
            takes it), so a sample with a broken file fails alone when it is read, instead of
            the whole dataset at construction (``predict`` with ``on_error="skip"``).

    Returns:
        A :class:`FileInput`, or the dataset class's instance for a dataset root; its
        ``transform`` is left unset.

    Raises:
        DataError: a plain path that does not exist, an unknown modality name, a modality
            given twice, a dataset root combined with other inputs, unmatched stems, and the
            dataset's own errors.
    """
    from ..data.datasets import create_dataset, dataset_options, get_dataset_class

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise DataError("no inputs given")
    modalities = list(cfg.model.modalities)
    sources = [parse_input(x) for x in items]
    plain = [s for s in sources if s.modality is None]
    named = [s for s in sources if s.modality is not None]
    if len(plain) > 1:
        raise DataError(f"at most one folder or dataset root among the inputs, got "
                        f"{', '.join(s.path for s in plain)}")
    files: dict[str, dict[str, Path]] = {}
    if plain:
        root = Path(plain[0].path)
        if not root.is_dir():
            raise DataError("input folder not found", path=root)
        if not _is_modality_folder(root, modalities):
            if named:
                raise DataError(f"{root}: a dataset root cannot be combined with "
                                "per-modality inputs (MODALITY=PATH)", path=root)
            options = dict(cfg.data.options)
            options["specs"] = dict(specs if dataset_specs is None else dataset_specs)
            accepted = dataset_options(get_dataset_class(cfg.data.dataset))
            if not check_files and (accepted is None or "check_files" in accepted):
                options["check_files"] = False
            return create_dataset(cfg.data.dataset, str(root), split or cfg.data.val_split,
                                  modalities, **options)
        for m in [*modalities, LABEL]:
            if (root / m).is_dir():
                files[m] = source_files(InputSource(m, str(root / m)))
    given: set[str] = set()
    channels: dict[str, tuple[int, ...]] = {}
    for s in named:
        if s.modality not in (*modalities, LABEL):
            raise DataError(f"input '{s.modality}={s.path}': the model has no modality "
                            f"'{s.modality}' (modalities: {', '.join(modalities)}; or label)",
                            modality=s.modality)
        if s.modality in given:
            raise DataError(f"modality '{s.modality}' given twice among the inputs",
                            modality=s.modality)
        given.add(s.modality)
        files[s.modality] = source_files(s)
        if s.channels is not None:
            channels[s.modality] = s.channels
    order = [m for m in [*modalities, LABEL] if m in files]
    return FileInput({m: files[m] for m in order}, specs, channels)
