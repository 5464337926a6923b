# robench: `make install` sets up .venv, the embedded dataset and a browser for the page tests; `make test` runs the
# test suite; `make docs` builds the documentation site into site/; `make lint` runs ruff and mypy.
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" != 0 ] && command -v sudo)

.PHONY: install test quick lint docs data browser checkpoints leaderboard study clean

install: $(VENV)/.installed data browser

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt -e '.[dev]'
	touch $@

# The embedded default dataset: Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/).
data:
	@if [ -f $(FMNIST) ] || [ -f data/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing and apt-get is unavailable: put the four Fashion-MNIST IDX .gz files in ./data/fashion-mnist/."; \
	fi

# A real browser for the web-leaderboard tests: Debian's chromium and chromium-driver (never downloaded at run time).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
	  echo "Chromium is missing and apt-get is unavailable: the web-leaderboard browser tests will skip."; \
	fi

# Two worker processes (pytest-xdist), one torch thread each (tests/conftest.py): on two cores, about 1.5x
# quicker than one process with two threads.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS)

# The tests not marked slow: about a minute.
quick: install
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The documentation site: its own venv (mkdocs-material wants a newer `requests` than torchattacks allows, and
# mkdocstrings reads the source without importing torch), the generated pages brought up to date, then a strict build.
DOCS_VENV ?= .venv-docs
docs: install $(DOCS_VENV)/.installed
	$(PY) docs/generate.py --only cli
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --quiet
	@echo "Built $$(find site -name '*.html' | wc -l) pages into site/; open site/index.html"

$(DOCS_VENV)/.installed: docs/requirements.txt
	python3 -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install -q --no-cache-dir -r docs/requirements.txt
	touch $@

# Rebuild the shipped zoo from scratch with the recipes in checkpoints/zoo.toml (see checkpoints/README.md
# for how long it takes); the table in checkpoints/README.md is rewritten from the new files.
checkpoints: install
	$(VENV)/bin/robench train --zoo checkpoints/zoo.toml --overwrite

# The leaderboard: the committed results (leaderboard/results/, a file of per-example outcomes per run) are imported
# into the store, the suite evaluates whatever they lack (every checkpoint, clean, PGD eps sweep and
# AutoAttack), the transfer matrices run within each group (MI-FGSM at eps 0.1; with SEEDS=yes, as `make study`
# sets it, also among the training-seed replicates of each seed), leaderboard/ is written
# (tables, model_info, report.md and figures) and the results are exported again. On a fresh clone
# nothing is lacking, so leaderboard/ comes out as committed; a short PGD demo then shows a real
# evaluation with its progress (its own store, results/demo.sqlite).
SUITE ?= suites/leaderboard.toml
LEADERBOARD_STORE ?= results/leaderboard.sqlite
LEADERBOARD ?= leaderboard
RESULTS ?= $(LEADERBOARD)/results
IMPORT ?= yes
SEEDS ?= no
TRANSFER_N ?= 500
RESNET_TRANSFER_N ?= 200
ROBENCH := $(VENV)/bin/robench
TRANSFER := $(ROBENCH) transfer --eps 0.1 --store $(LEADERBOARD_STORE)
leaderboard: install
	@if [ "$(IMPORT)" = yes ] && [ -e $(RESULTS) ]; then $(ROBENCH) import $(RESULTS) --store $(LEADERBOARD_STORE); fi
	$(ROBENCH) eval --config $(SUITE) --store $(LEADERBOARD_STORE)
	$(TRANSFER) --n $(TRANSFER_N) --all 'checkpoints/lenet5-*-pgd-at.safetensors'
	$(TRANSFER) --n $(TRANSFER_N) --all 'checkpoints/lenet5-*-standard.safetensors'
	$(TRANSFER) --n $(RESNET_TRANSFER_N) --all 'checkpoints/resnet20-*.safetensors'
	@if [ "$(SEEDS)" = yes ]; then for seed in 1 2; do for method in pgd-at standard; do set -x; $(TRANSFER) \
	  --n $(TRANSFER_N) --all "checkpoints/seeds/lenet5-*-$$method-seed$$seed.safetensors" || exit 1; done; done; fi
	$(ROBENCH) leaderboard --store $(LEADERBOARD_STORE) --out $(LEADERBOARD)
	$(ROBENCH) export $(RESULTS) --store $(LEADERBOARD_STORE)
	@if [ "$(IMPORT)" = yes ]; then $(ROBENCH) eval checkpoints/lenet5-relu-pgd-at.safetensors \
	  checkpoints/lenet5-splash-pgd-at.safetensors --n 2000 --eps 0.1 --attack pgd --store results/demo.sqlite --force; fi

# The activation study at full strength (suites/study.toml: clean and the PGD sweep on all 10,000 test
# images, AutoAttack on 1,000 per LeNet5 and 500 per ResNet-20, transfer on 1,000), recomputed from scratch
# into results/study.sqlite and written to results/study/ (the archive: results/study.jsonl.gz). Hours on a
# 2-core CPU; the store resumes per batch, so it can run over several sittings.
study: install
	$(MAKE) leaderboard SUITE=suites/study.toml LEADERBOARD_STORE=results/study.sqlite LEADERBOARD=results/study \
	  RESULTS=results/study.jsonl.gz IMPORT=no SEEDS=yes TRANSFER_N=1000 RESNET_TRANSFER_N=1000

clean:
	rm -rf $(VENV) $(DOCS_VENV) site .pytest_cache
