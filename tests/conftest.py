"""Shared test settings: the tiny model sizes and one CPU thread per test process.

Tiny settings come from the registries (declared where each backbone / model registers), so
the tests and the contract sweep build the same small models::

    from conftest import TINY_MIT, tiny_model_cfg
"""

from __future__ import annotations

import os

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


def tiny_run_cfg(tmp_path, root, **train_opts):
    """A 2-step training run of a tiny sum-fusion model (rgb + depth, 32 px crops) on the
    DELIVER-layout tree at ``root``, run dirs under ``tmp_path/runs``; ``train_opts`` go into
    the train section."""
    from fusionseg.config import config_from_dict

    return config_from_dict({
        "name": "tiny", "seed": 0,
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": ["rgb", "depth"],
                  "decoder_dim": 16, "backbone_kwargs": TINY_MIT},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 2, "num_workers": 0},
        "train": {"max_epochs": 1, "max_steps": 2, "lr": 1e-3, "progress": False,
                  "out_dir": str(tmp_path / "runs"), **train_opts},
    })


def run_cli_eval(config, sets: list[str], ckpt) -> dict:
    """``fusionseg eval CONFIG --ckpt CKPT --set ...`` through the CLI (exit 0 asserted); the
    result JSON it writes next to the checkpoint, parsed (the end-to-end parity tests)."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from fusionseg.cli import app

    ckpt = Path(ckpt)
    args = ["eval", str(config), "--ckpt", str(ckpt)]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    written = sorted(ckpt.parent.glob(f"{ckpt.stem}_eval_*.json"))
    assert len(written) == 1, written
    return json.loads(written[0].read_text())


# train.precision: auto must not depend on the machine the suite runs on (bf16 on a CPU with
# AVX-512 BF16 / AMX): pinned to fp32 here, for subprocesses too; tests of auto unset it
os.environ.setdefault("FUSIONSEG_AUTO_PRECISION", "32-true")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models: one thread per process avoids OpenMP wake-up latency, and the suite runs
    one process per core (``pytest -n 2``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
