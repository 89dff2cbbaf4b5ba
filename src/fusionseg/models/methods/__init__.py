"""The methods, one package each; importing this package registers their models.

Each package holds everything one method owns: ``model.py`` (the segmentor, its options and
its registration), its own modules (adapters, fusion, decoders) and its released-format key
maps. Parts two or more methods use live in ``models/backbones``, ``models/heads``,
``models/peft``, ``models/fusion`` and ``models/layers.py``.
"""

from . import asymfusion, baselines, mle_sam, mobanet, stitchfusion

__all__ = ["asymfusion", "baselines", "mle_sam", "mobanet", "stitchfusion"]
