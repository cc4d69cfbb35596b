# layoutja — every target sets itself up: `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.layoutja-installed
# torch is installed on its own, pinned, before anything can pull a different build.
# The default pin takes the CPU wheel where one is provided locally; override for CUDA machines.
TORCH ?= torch==2.13.0
# Debian packages the browser stage needs: Chromium and exactly one CJK font (reproducible widths).
APT_PACKAGES := chromium fonts-ipafont-gothic
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps test lint demo bench clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	@# Constrain torch to what is installed so no dependency can upgrade it.
	$(PY) -m pip install -q -e ".[dev]" --constraint <($(PY) -c "from importlib.metadata import version; print('torch==' + version('torch'))")
	@touch $@

system-deps:
	@if ! command -v chromium >/dev/null || ! fc-list :lang=ja 2>/dev/null | grep -qi ipa; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check layoutja tests bench demo
	$(VENV)/bin/ruff format --check layoutja tests bench demo

# --- the pipeline, step by step ------------------------------------------------------------
# `make demo` runs every step on the demo corpus shipped in demo/shinra (24 articles written for
# this project, with SHINRA annotations). Each step is a target of its own; the variables point
# at the demo's data by default and at real data for a real run, e.g.
#   make localize SRC=/data/shinra/html TOKENIZER=cl-tohoku/bert-base-japanese-v2 OUT=runs
#   make pretrain OUT=runs INIT=cl-tohoku/bert-base-japanese-v2 RECIPE=train/mvlm-base.yaml
#   make finetune OUT=runs SHINRA=/data/shinra2022 FT_RECIPE=train/finetune-shinra.yaml
OUT        ?= demo-out
SHINRA     ?= demo/shinra
SRC        ?= $(SHINRA)/html
TOKENIZER  ?= $(OUT)/tokenizer
VOCAB_SIZE ?= 4000
INIT       ?= $(OUT)/layoutlm-init
RECIPE     ?= train/mvlm-tiny.yaml
ELECTRA_RECIPE ?= train/electra-tiny.yaml
ELECTRA_DATA   ?= $(OUT)/localized
ELECTRA_ARGS   ?=
FT_RECIPE  ?= train/finetune-tiny.yaml
FT_MODEL   ?= $(OUT)/mvlm
FT_LOCALIZED ?= $(OUT)/localized
WINDOW     ?= --max-length 128 --margin 32
GOLD       ?= $(wildcard $(SHINRA)/annotation/*.jsonl)
MASKED     ?= 東京大学で[MASK]の研究をしています。
STEPS      ?=
EPOCHS     ?=
LJ         := $(VENV)/bin/layoutja

.PHONY: vocab localize show bert init-model pretrain electra finetune predict score fill-mask plot

demo: setup
	@$(MAKE) --no-print-directory vocab localize show bert init-model pretrain electra finetune \
	  predict score fill-mask plot
	@echo
	@echo "demo artefacts in $(OUT)/:"
	@echo "  tokenizer/          the WordPiece vocabulary (AutoTokenizer loads it)"
	@echo "  localized/          every page's tokens and boxes (Parquet) + manifest.json"
	@echo "  page.png            one page with every token box drawn"
	@echo "  bert/, layoutlm-init/  the tiny BERT and the LayoutLM made from it"
	@echo "  mvlm/               the MVLM-pretrained LayoutLM (metrics.jsonl, tensorboard/)"
	@echo "  electra/            a layout-aware ELECTRA: generator/ and discriminator/ (LayoutLM)"
	@echo "  shinra/             the fine-tuned attribute extractor (dev F1 in metrics.jsonl)"
	@echo "  predictions.jsonl   its SHINRA predictions; score.json their score"
	@echo "  loss.png            loss curves and dev F1"

# An existing vocabulary is kept: everything after it (localized pages, models) depends on it,
# and retraining gives a slightly different one (tokenizers' trainer breaks ties at random).
vocab: setup
	@if [ -f $(TOKENIZER)/vocab.txt ]; then \
	  echo "$(TOKENIZER) exists: keeping it (delete it to train a new vocabulary)"; \
	else \
	  $(LJ) vocab $(SRC) --out $(TOKENIZER) --vocab-size $(VOCAB_SIZE) --alphabet corpus \
	    --min-frequency 1; \
	fi

localize: setup
	$(LJ) localize $(SRC) --tokenizer $(TOKENIZER) --out $(OUT)/localized \
	    --config localize/published.yaml

show: setup
	$(LJ) show $(firstword $(sort $(wildcard $(SRC)/*/*.html $(SRC)/*.html))) \
	  --tokenizer $(TOKENIZER) --out $(OUT)/page.png

bert: setup
	$(PY) demo/tiny_bert.py --tokenizer $(TOKENIZER) --out $(OUT)/bert

init-model: setup
	$(LJ) init-model --from $(OUT)/bert --out $(OUT)/layoutlm-init

# --resume: a re-run continues (or, when finished, just exports) instead of refusing.
pretrain: setup
	$(LJ) pretrain --config $(RECIPE) --data $(OUT)/localized --init $(INIT) --out $(OUT)/mvlm \
	  --resume $(if $(STEPS),--schedule.max_steps $(STEPS))

# ELECTRA from scratch: the tokenizer gives the vocabulary. ELECTRA_DATA may be localized pages
# or, text-only (ELECTRA_ARGS="--electra.layout false"), a plain-text corpus, e.g.
#   make electra OUT=runs ELECTRA_DATA=wiki.txt ELECTRA_RECIPE=train/electra-base.yaml
electra: setup
	$(LJ) pretrain --config $(ELECTRA_RECIPE) --data $(ELECTRA_DATA) --tokenizer $(TOKENIZER) \
	  --out $(OUT)/electra --resume $(if $(STEPS),--schedule.max_steps $(STEPS)) $(ELECTRA_ARGS)

# Localizing is a step of its own, before training: pages already in FT_LOCALIZED are skipped.
finetune: setup
	$(LJ) localize $(SHINRA)/html --tokenizer $(FT_MODEL) --out $(FT_LOCALIZED) --quiet
	$(LJ) finetune --config $(FT_RECIPE) --data $(SHINRA) --model $(FT_MODEL) \
	  --out $(OUT)/shinra --localized $(FT_LOCALIZED) --resume \
	  $(if $(EPOCHS),--schedule.epochs $(EPOCHS))

predict: setup
	$(LJ) localize $(SHINRA)/html --tokenizer $(OUT)/shinra --out $(FT_LOCALIZED) --quiet
	$(LJ) predict --model $(OUT)/shinra --data $(SHINRA) --out $(OUT)/predictions.jsonl \
	  --localized $(FT_LOCALIZED) $(WINDOW)

score: setup
	$(LJ) score --gold $(GOLD) --pred $(OUT)/predictions.jsonl --html $(SHINRA)/html \
	  --out $(OUT)/score.json | tail -n 4

fill-mask: setup
	$(LJ) fill-mask --model $(OUT)/mvlm "$(MASKED)"
	$(LJ) fill-mask --model $(OUT)/electra/generator "$(MASKED)"

plot: setup
	$(LJ) plot $(OUT)/mvlm $(OUT)/shinra --out $(OUT)/loss.png

# Tokenizer speed against transformers' BertJapaneseTokenizer, localization speed against a bare
# Chromium loop, pretraining speed (MVLM, ELECTRA) against HF Trainer, on real Japanese text (Debian's Japanese documentation; installed if missing).
BENCH_DOCS := debian-reference-ja developers-reference-ja debian-faq-ja maint-guide-ja \
              debian-policy-ja gimp-help-ja
bench: setup
	@dpkg -s $(BENCH_DOCS) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BENCH_DOCS) >/dev/null; }
	$(PY) bench/bench_tokenizer.py
	$(PY) bench/bench_localize.py
	$(PY) bench/bench_network_guard.py
	$(PY) bench/bench_pretrain.py
	$(PY) bench/bench_pretrain.py --objectives mvlm,electra --hidden 384

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
