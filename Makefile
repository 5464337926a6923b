# robench: `make install` sets up .venv and the embedded dataset; `make test` runs the test suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" != 0 ] && command -v sudo)

.PHONY: install test data checkpoints leaderboard clean

install: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# The embedded default dataset: Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/).
data:
	@if [ -f $(FMNIST) ] || [ -f data/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing and apt-get is unavailable: put the four Fashion-MNIST IDX .gz files in ./data/fashion-mnist/."; \
	fi

test: install
	$(PY) -m pytest

# Rebuild the shipped zoo from scratch with the recipes in checkpoints/zoo.toml (see checkpoints/README.md
# for how long it takes); the table in checkpoints/README.md is rewritten from the new files.
checkpoints: install
	$(VENV)/bin/robench train --zoo checkpoints/zoo.toml --overwrite

# Evaluate every shipped checkpoint with the suite (clean, PGD eps sweep, AutoAttack) into its own store,
# run the transfer matrix within each group (MI-FGSM at eps 0.1), then write leaderboard/ (tables,
# model_info, report.md and figures). A second run reads the store.
SUITE ?= suites/leaderboard.toml
LEADERBOARD_STORE ?= results/leaderboard.sqlite
TRANSFER := $(VENV)/bin/robench transfer --eps 0.1 --store $(LEADERBOARD_STORE) --quiet
leaderboard: install
	$(VENV)/bin/robench eval --config $(SUITE) --store $(LEADERBOARD_STORE) --quiet
	$(TRANSFER) --n 500 --all 'checkpoints/lenet5-*-pgd-at.safetensors'
	$(TRANSFER) --n 500 --all 'checkpoints/lenet5-*-standard.safetensors'
	$(TRANSFER) --n 200 --all 'checkpoints/resnet20-*.safetensors'
	$(VENV)/bin/robench leaderboard --store $(LEADERBOARD_STORE) --out leaderboard

clean:
	rm -rf $(VENV) .pytest_cache
