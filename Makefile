# Quick start: `make demo` (whole pipeline on the sample clips) and `make test` (test suite).
# Both install from requirements.lock (exact versions); `make lock` regenerates it (docs/install.md).
PY ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-slow lint lock bench clean gpu-check checkset bench-realmusic

$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -c "import mirkit.data.audio"   # fails with a clear message if torch/torchaudio disagree
	touch $(STAMP)

install: $(STAMP)

demo: install
	PATH="$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(BIN):$$PATH" $(BIN)/mirkit probe --show

# two tiers (pytest marker `slow`): unit and CLI tests first, so they fail fast; then the end-to-end
# ones (the whole `dvc repro`, experiments, kill -9 resume, DDP under torchrun, torch.compile)
test: lint test-fast test-slow

test-fast: install
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

test-slow: install
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -m slow --durations=10

lint: install
	$(BIN)/ruff check mirkit tests bench
	$(BIN)/mypy mirkit

# every recipe at its paper preset on a CUDA device (bf16 step eager/compiled, MFU, peak memory, DDP/NCCL,
# streaming loader idle share, extract); <= 10 min; on a machine without CUDA it says so and exits 0
gpu-check: install
	PATH="$(BIN):$$PATH" timeout 600 $(BIN)/python bench/gpu_check.py

# real-music check set (Bach chorales from music21's corpus, rendered with fluidsynth; cached in
# $$MIRKIT_CACHE or ~/.cache/mirkit, never in git) and the pretrained-vs-random bench on it (docs/training.md)
checkset: install
	@command -v fluidsynth >/dev/null && test -f /usr/share/sounds/sf2/FluidR3_GM.sf2 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q fluidsynth fluid-soundfont-gm; } || \
		{ echo "needs: apt-get install -y fluidsynth fluid-soundfont-gm (as root)"; exit 2; }
	$(BIN)/python -c "import music21" 2>/dev/null || $(BIN)/python -m pip install -q -r bench/realmusic/requirements.txt
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/realmusic/build_checkset.py

RECIPES ?= mt2 myna contrastive muse-lq   # each trains its training preset <recipe>-cpu15 (mirkit.train.presets)
bench-realmusic: checkset
	for r in $(RECIPES); do PYTHONPATH=$(CURDIR) $(BIN)/python bench/realmusic/bench_realmusic.py --cpu15 $$r || exit 1; done

lock:
	PY=$(PY) .ci/lock

clean:
	rm -rf data/samples data/*.zarr data/embeddings models results .dvc/cache
