"""Segmentors; importing this package registers their builders in the model registry."""

from . import asymfusion, baselines, mle_sam, mobanet, stitchfusion
from .base import ModalityInput, SegmentationOutput, Segmentor

__all__ = ["ModalityInput", "SegmentationOutput", "Segmentor", "asymfusion", "baselines", "mle_sam", "mobanet", "stitchfusion"]
