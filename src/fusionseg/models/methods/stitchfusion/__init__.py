"""StitchFusion: ``model.py`` (options and segmentor), ``release.py`` (the authors' checkpoint
keys), ``adapters.py`` (MultiAdapter), ``featurecross.py`` (FeatureCross)."""

from . import model

__all__ = ["model"]
