# Two entry points for a fresh machine (see README.md):
#   make demo   set up, render synthcity, train the quickstart model (runs/quickstart), then its
#               robust second stage (runs/quickstart_robust), evaluate both under every
#               missing-modality subset (EMM), print the two EMM tables side by side, write panels
#   make test   set up and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FS     := $(BIN)/fusionseg
DATA   ?= data/synthcity
RUN    ?= runs/quickstart

.PHONY: demo test install lint quickstart-rgb clean mutate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned first: a bare 'torch' requirement would pull a newer CUDA build (GBs)
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

$(DATA)/synthcity.json: | $(VENV)/.installed
	$(FS) data synth city --out $(DATA) --train 400 --val 100 --size 128 --seed 0

demo: $(VENV)/.installed $(DATA)/synthcity.json
	rm -rf $(RUN) $(RUN)_robust
	$(FS) train configs/quickstart.yaml --run-dir $(RUN)
	$(FS) eval configs/quickstart.yaml --ckpt $(RUN)/checkpoints/best.ckpt --protocol emm
	$(FS) train configs/quickstart_robust.yaml --run-dir $(RUN)_robust \
		--set train.init_from=$(RUN)/checkpoints/best.ckpt
	$(FS) eval configs/quickstart_robust.yaml --ckpt $(RUN)_robust/checkpoints/best.ckpt --protocol emm
	$(FS) report $(RUN) $(RUN)_robust --out $(RUN)_robust/report
	$(FS) predict --ckpt $(RUN)_robust/checkpoints/best.ckpt --input $(DATA) --split val \
		--max-samples 12 --out $(RUN)_robust/predictions
	@echo "prediction panels: $(RUN)_robust/predictions/panels"

# the RGB-only baseline of the README's comparison table
quickstart-rgb: $(VENV)/.installed $(DATA)/synthcity.json
	rm -rf runs/quickstart_rgb
	$(FS) train configs/quickstart_rgb.yaml --run-dir runs/quickstart_rgb
	$(FS) eval configs/quickstart_rgb.yaml --ckpt runs/quickstart_rgb/checkpoints/best.ckpt

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 tests

# mutation testing of the core modules listed under [tool.mutmut] in pyproject.toml (about an
# hour on 2 cores; not in CI): the score per module and every surviving mutant are in tests/README.md
mutate: $(VENV)/.installed
	$(BIN)/python -m pip install -q "mutmut>=3.8,<4"
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(shell nproc)
	$(BIN)/python tests/mutation_report.py

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs data .pytest_cache
