"""Inference apart from training: importing ``fusionseg.inference`` loads no training code.

The import contract of the whole package (layers, no import cycle among the modules of
``fusionseg.inference``) is read from the source in ``tests/test_layering.py``; this file
checks what an import actually loads, in a fresh interpreter, and that evaluation and
prediction run the same inference modes (``fusionseg.models.inference_modes``, below both).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: what importing inference code must not load: Lightning, the training engine, the CLI
TRAINING_STACK = ("lightning", "pytorch_lightning", "lightning_fabric", "fusionseg.engine",
                  "fusionseg.cli")


@pytest.mark.parametrize("module", ["fusionseg.inference", "fusionseg.inference.prediction",
                                    "fusionseg.inference.export",
                                    "fusionseg.models.inference_modes"])
def test_importing_inference_loads_no_training_stack(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {TRAINING_STACK[:3]!r} "
            f"or m.startswith({TRAINING_STACK[3:]!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_engine_and_inference_share_the_inference_modes():
    from fusionseg.engine import module, runner
    from fusionseg.inference import prediction
    from fusionseg.models import inference_modes

    for user in (prediction, runner, module):
        assert user.predict_logits is inference_modes.predict_logits
        assert user.inference_kwargs is inference_modes.inference_kwargs
