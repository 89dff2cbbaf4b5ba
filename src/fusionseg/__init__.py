"""fusionseg: multimodal semantic segmentation with parameter-efficient adaptation of vision encoders."""

__version__ = "0.1.0"
