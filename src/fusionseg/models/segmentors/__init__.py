"""Segmentors; importing this package registers their builders in the model registry."""

from . import asymfusion, baselines, mobanet, stitchfusion
from .base import ModalityInput, SegmentationOutput, Segmentor

__all__ = ["ModalityInput", "SegmentationOutput", "Segmentor", "asymfusion", "baselines", "mobanet", "stitchfusion"]
