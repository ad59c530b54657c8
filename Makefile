# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch lies on disk on our machines; elsewhere pip falls back to torch>=2.4.
	-$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo
	@echo "Done. Generated drums (MIDI, NPZ, piano-roll PNGs): data/generated/"
	@echo "      Evaluation report: data/eval/default/validation/report.md (scores: metrics.json beside it)"
	@echo "      Checkpoints and TensorBoard logs: runs/default/  (tensorboard --logdir runs)"
	@echo "      Evaluation page: data/eval/default/validation/report.html"
	@echo "Listen (open in a browser): data/generated/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)   # tests/unit only (no subprocesses, DVC, torchrun, browser or Groove data), on every core
	$(BIN)/python -m pytest -q -n auto tests/unit

lint: $(STAMP)   # also part of `make test` (tests/e2e/test_lint.py)
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) data/interim data/*.zarr data/ready runs outputs
