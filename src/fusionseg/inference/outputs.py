"""What a prediction run writes per sample, and its summary.

Per sample ``{id}`` (:func:`output_name`): ``out/masks/{id}.png`` (colorized prediction),
``out/panels/{id}.png`` (each modality, the label when present, the prediction, a legend of
the classes present) and, with overlays, ``out/overlays/{id}.png``. Every file is written
atomically (:func:`save_png`), so a file that exists is complete and ``skip_existing`` can
trust it. A sample skipped for its input files is appended to ``out/failed.txt``
(:func:`record_failure`) as the run goes; :class:`PredictionSummary` counts it all and
:class:`PredictionIncomplete` ends a run in which some samples failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..data.io import DataError
from ..files import atomic_path
from .sensors import DeadSensors

__all__ = [
    "FAILURES_FILE",
    "ON_ERROR_CHOICES",
    "FailedSample",
    "OnError",
    "PredictionIncomplete",
    "PredictionSummary",
    "SampleOutputs",
    "one_line",
    "output_name",
    "record_failure",
    "sample_outputs",
    "save_png",
]

#: what a run does with a sample whose input files cannot be used (see ``predict``)
OnError = Literal["skip", "stop"]
ON_ERROR_CHOICES: tuple[str, ...] = ("skip", "stop")
#: the failed samples of a run (``{id}<TAB>{error}`` lines), under its output folder
FAILURES_FILE = "failed.txt"
DEAD_LINES_SHOWN = 20  # summary lines naming frames with dead sensors, the rest counted


@dataclass(frozen=True)
class SampleOutputs:
    """The files a run writes for one sample (:func:`sample_outputs`).

    Attributes:
        mask: ``out/masks/{name}.png``.
        panel: ``out/panels/{name}.png``.
        overlay: ``out/overlays/{name}.png``, or ``None`` when overlays are not written.
    """

    mask: Path
    panel: Path
    overlay: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file of the sample, in the order they are written."""
        return (self.mask, self.panel) + (() if self.overlay is None else (self.overlay,))

    @property
    def frame(self) -> Path:
        """The sample's video frame: the overlay when overlays are written, else the panel."""
        return self.panel if self.overlay is None else self.overlay

    def exist(self) -> bool:
        """Whether every file of the sample is there (each is written atomically, so a file
        that exists is complete)."""
        return all(p.is_file() for p in self.paths)


def output_name(sample_id: Any) -> str:
    """The file stem of a sample's outputs: its id with ``/`` replaced by ``_``."""
    return str(sample_id).replace("/", "_")


def sample_outputs(out_dir: str | Path, name: str, overlay: bool = False) -> SampleOutputs:
    """The output files of sample ``name`` (:func:`output_name`) under ``out_dir``."""
    out_dir = Path(out_dir)
    return SampleOutputs(mask=out_dir / "masks" / f"{name}.png",
                         panel=out_dir / "panels" / f"{name}.png",
                         overlay=out_dir / "overlays" / f"{name}.png" if overlay else None)


@dataclass(frozen=True)
class FailedSample:
    """A sample skipped because its input files could not be used.

    Attributes:
        id: the sample's output name (:func:`output_name`; ``#{index}`` when the input cannot
            tell the id without reading the files).
        error: the :class:`DataError` message on one line (it names the file and modality).
    """

    id: str
    error: str


@dataclass
class PredictionSummary:
    """What a :func:`~fusionseg.inference.prediction.predict` run did with each of its ``total``
    samples.

    Attributes:
        out_dir: the output folder.
        total: the samples of the run (after ``max_samples``).
        written: output names of the samples predicted and written by this run.
        skipped_existing: output names skipped because all their outputs existed
            (``skip_existing``).
        failed: the samples skipped because of a data problem (``on_error="skip"``), a
            frame whose every modality is dead among them.
        dead: the frames predicted without some dead modality (sensor health), in run order.
        sensors: ``out/sensors.csv`` when sensor health ran, else ``None``.
        video: the video written, or ``None``.
    """

    out_dir: Path
    total: int = 0
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: list[FailedSample] = field(default_factory=list)
    dead: list[DeadSensors] = field(default_factory=list)
    sensors: Path | None = None
    video: Path | None = None

    @property
    def failures_file(self) -> Path | None:
        """``out/failed.txt`` (one ``{id}<TAB>{error}`` line per failure) when any failed."""
        return self.out_dir / FAILURES_FILE if self.failed else None

    @property
    def done(self) -> list[str]:
        """Output names of the samples whose outputs are all on disk, sorted."""
        return sorted([*self.written, *self.skipped_existing])

    def lines(self) -> list[str]:
        """The summary as text lines: the counts, one line per frame run without a dead
        sensor (the first :data:`DEAD_LINES_SHOWN`, then a count), one per failed sample."""
        head = (f"{self.total} sample(s): {len(self.written)} written, "
                f"{len(self.skipped_existing)} skipped (outputs existed), "
                f"{len(self.failed)} failed; outputs in {self.out_dir}")
        if self.video is not None:
            head += f", video {self.video}"
        dead = [d.line() for d in self.dead[:DEAD_LINES_SHOWN]]
        if len(self.dead) > DEAD_LINES_SHOWN:
            dead.append(f"dead sensors in {len(self.dead) - DEAD_LINES_SHOWN} more frame(s); "
                        f"see {self.sensors}")
        return [head] + dead + [f"failed {f.id}: {f.error}" for f in self.failed]


class PredictionIncomplete(DataError):
    """Raised at the end of an ``on_error="skip"`` run in which some samples failed, after
    every other output (and the video) is written. ``summary`` is the run's
    :class:`PredictionSummary`; the message is one line naming the failed samples."""

    def __init__(self, summary: PredictionSummary):
        self.summary = summary
        ids = [f.id for f in summary.failed]
        super().__init__(
            f"{len(ids)} of {summary.total} sample(s) failed on their input files and were "
            f"skipped: {_some(ids)}; the other {len(summary.done)} have their outputs; the "
            f"reasons are in {summary.failures_file}; fix those files and re-run with "
            "--skip-existing to predict only what is missing")


def one_line(text: str) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(text).split())


def record_failure(summary: PredictionSummary, failure: FailedSample) -> None:
    """Add ``failure`` to the summary and append it to ``out/failed.txt`` right away, so an
    interrupted run keeps the failures found so far."""
    summary.failed.append(failure)
    path = summary.out_dir / FAILURES_FILE
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{failure.id}\t{failure.error}\n")


def save_png(path: Path, image: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 image as PNG, atomically (no truncated file on a kill)."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _some(stems: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``stems``, comma-separated, and how many more there are."""
    shown = ", ".join(stems[:n])
    return shown + (f" (+{len(stems) - n} more)" if len(stems) > n else "")
