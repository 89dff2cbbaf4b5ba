"""Sensor health during a prediction run: check each frame, drop dead modalities, log them.

:class:`SensorMonitor` runs :func:`~fusionseg.inference.health.check_modality` on every
modality of every frame, on the array as read from its file (the samples hold scaled tensors
only, so the file is read a second time), remembers the previous frame per modality for the
``frozen`` check, appends one row per frame to ``out/sensors.csv`` (``id`` and a status per
model modality: ``ok``, the reason, or ``absent``) and drops a dead modality from the sample
exactly as a modality that was not given (:func:`~fusionseg.data.sample.drop_modalities`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import DataError, read_image
from ..data.modalities import ModalitySpec
from ..data.sample import drop_modalities
from .health import ABSENT, OK, SensorHealth, check_modality

__all__ = ["SENSORS_FILE", "DeadSensors", "DeadSensorsError", "SensorMonitor"]

#: the per-frame sensor status table of a run, under its output folder
SENSORS_FILE = "sensors.csv"


@dataclass(frozen=True)
class DeadSensors:
    """A frame predicted without some of its modalities because their sensors were dead.

    Attributes:
        id: the sample's output name (:func:`fusionseg.inference.outputs.output_name`).
        dead: modality -> health status (``"zero"``, ``"frozen"``...;
            :mod:`fusionseg.inference.health`).
        used: the modalities the model ran on, in the model's order.
    """

    id: str
    dead: dict[str, str]
    used: tuple[str, ...]

    def line(self) -> str:
        """``"dead sensors {id}: depth frozen, thermal zero; ran on rgb"``."""
        dead = ", ".join(f"{m} {s}" for m, s in self.dead.items())
        return f"dead sensors {self.id}: {dead}; ran on {', '.join(self.used)}"


class DeadSensorsError(DataError):
    """A frame refused by sensor health (every modality dead, or a dead one the model needs);
    unlike a file that cannot be read, it leaves the frozen check's previous frame known."""


class SensorMonitor:
    """Sensor health of one run: checks each frame's modalities on their arrays as read
    from the files named in ``meta["paths"]`` (read a second time: the samples hold scaled
    tensors only), remembers the previous frame per modality (``frozen``), writes
    ``out/sensors.csv`` (one row per checked frame, appended as the run goes) and drops the
    dead modalities.

    Args:
        health: the thresholds.
        modalities: the model's modalities (the CSV columns).
        specs: modality -> spec the files are read with (``npz_key``, ``file_channels``).
        out_dir: the output folder.
        required: modalities the model cannot run without (an ONNX export's inputs), or
            ``None`` (a torch model runs on any non-empty subset).
        carry_over: keep the rows of an earlier ``sensors.csv`` for the samples that
            ``skip_existing`` skips.
    """

    def __init__(self, health: SensorHealth, modalities: Sequence[str],
                 specs: Mapping[str, ModalitySpec], out_dir: Path,
                 required: Sequence[str] | None, carry_over: bool) -> None:
        self.health = health
        self.modalities = list(modalities)
        self.specs = specs
        self.required = None if required is None else list(required)
        self.path = out_dir / SENSORS_FILE
        self.previous: dict[str, np.ndarray] = {}
        self.previous_paths: Mapping[str, Any] | None = None  # of a skipped previous frame
        header = ["id", *self.modalities]
        self.old_rows: dict[str, list[str]] = {}
        if carry_over and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] == header:
                self.old_rows = {r[0]: r for r in rows[1:] if len(r) == len(header)}
        self._append(header, mode="w")

    def _append(self, row: Sequence[str], mode: str = "a") -> None:
        with open(self.path, mode, newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(row)

    def forget(self) -> None:
        """The next frame's predecessor is unknown (a sample that failed to read)."""
        self.previous.clear()
        self.previous_paths = None

    def skipped(self, name: str, paths: Mapping[str, Any] | None) -> None:
        """Sample ``name`` was skipped (outputs existed): keep its earlier row, if any; its
        files ``paths`` (modality -> file, when known) are read only if the next frame is
        checked (its ``frozen`` predecessor)."""
        self.forget()
        self.previous_paths = paths
        if name in self.old_rows:
            self._append(self.old_rows[name])

    def _previous(self, m: str) -> np.ndarray | None:
        if m in self.previous or not self.previous_paths or m not in self.previous_paths:
            return self.previous.get(m)
        try:  # the previous frame was skipped: read its file now
            return self._raw({"meta": {"paths": self.previous_paths}}, m)
        except DataError:
            return None

    def _raw(self, sample: dict, m: str) -> np.ndarray | None:
        """Modality ``m`` as read from its file (``meta["paths"][m]``), ``file_channels``
        selected; ``None`` when the sample names no file for it."""
        spec = self.specs.get(m)
        path = sample["meta"].get("paths", {}).get(m)
        if path is None or spec is None:
            return None
        array = read_image(path, modality=m, key=spec.npz_key)
        channels = spec.file_channels
        if channels is not None and all(i < array.shape[2] for i in channels):
            array = array[:, :, list(channels)]
        return array

    def check(self, sample: dict, name: str) -> tuple[dict, DeadSensors | None]:
        """Check the sample's modalities, write its CSV row; returns the sample without its
        dead modalities (:func:`~fusionseg.data.sample.drop_modalities`, as if never given)
        and what was dropped (``None``: all healthy).

        Raises:
            DataError: every given modality is dead, or a dead one is an input the model
                cannot run without (an ONNX export); naming the first dead file and modality.
        """
        paths = sample["meta"].get("paths", {})
        statuses: dict[str, str] = {}
        for m in self.modalities:
            if m not in sample:
                statuses[m] = ABSENT
                self.previous.pop(m, None)
                continue
            array = self._raw(sample, m)
            if array is None:  # nothing to check against: trusted
                statuses[m] = OK
                self.previous.pop(m, None)
                continue
            statuses[m] = check_modality(array, self._previous(m), self.health,
                                         path=paths.get(m), modality=m)
            self.previous[m] = array
        self.previous_paths = None
        self._append([name, *(statuses[m] for m in self.modalities)])
        dead = {m: s for m, s in statuses.items() if s not in (OK, ABSENT)}
        if not dead:
            return sample, None
        used = tuple(m for m in self.modalities if statuses[m] == OK)
        first = next(iter(dead))
        desc = ", ".join(f"{m} {s}" for m, s in dead.items())
        if not used:
            raise DeadSensorsError(
                f"every given modality is dead ({desc}): nothing to predict from (sensor "
                f"health; see {SENSORS_FILE}, --health off predicts anyway)",
                path=paths.get(first), modality=first)
        needed = [m for m in dead if self.required is not None and m in self.required]
        if needed:
            raise DeadSensorsError(
                f"dead sensor(s) {desc}, and this ONNX model was exported for "
                f"{', '.join(self.required or [])} and cannot run without '{needed[0]}'; "
                "predict with --ckpt, export without it (fusionseg export --modalities ...), "
                "or --health off", path=paths.get(needed[0]), modality=needed[0])
        return drop_modalities(sample, used), DeadSensors(name, dead, used)
