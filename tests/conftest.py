"""Shared test settings: the tiny model sizes and one CPU thread per test process.

Tiny settings come from the registries (declared where each backbone / model registers), so
the tests and the contract sweep build the same small models::

    from conftest import TINY_MIT, tiny_model_cfg
"""

from __future__ import annotations

import pytest
import torch

from fusionseg.models import MODELS
from fusionseg.models.backbones import BACKBONES

#: tiny MiT constructor overrides (``backbone_kwargs``), as registered with ``mit_b0`` (lists,
#: so they also go into YAML configs)
TINY_MIT: dict = {k: list(v) for k, v in BACKBONES.entry("mit_b0").tiny.items()}


def tiny_model_cfg(name: str, **overrides) -> dict:
    """``create_model`` mapping of the tiny settings registered with model ``name``."""
    return {"name": name, **dict(MODELS.entry(name).tiny or {}), **overrides}


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models: one thread per process avoids OpenMP wake-up latency, and the suite runs
    one process per core (``pytest -n 2``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
