# layoutja — every target sets itself up: `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.layoutja-installed
# torch is installed on its own, pinned, before anything can pull a different build.
# The default pin takes the CPU wheel where one is provided locally; on a GPU machine pass pip's
# arguments for a CUDA build, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
# One stamp per TORCH value: a changed TORCH reinstalls torch, then the package against it.
TORCH ?= torch==2.13.0
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH)' | sha1sum | cut -c1-12)
# Debian packages the browser stage needs: Chromium and exactly one CJK font (reproducible widths).
APT_PACKAGES := chromium fonts-ipafont-gothic
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps test lint demo bench clean

setup: $(STAMP) system-deps

$(TORCH_STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A build of the same version (CPU → CUDA) would count as installed: remove it first.
	$(PY) -m pip uninstall -q -y torch 2>/dev/null || true
	$(PY) -m pip install -q $(TORCH)
	@rm -f $(VENV)/.torch-*
	@touch $@

$(STAMP): pyproject.toml $(TORCH_STAMP)
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
LOCALIZE_ARGS  ?=
FT_RECIPE  ?= train/finetune-tiny.yaml
FT_MODEL   ?= $(OUT)/mvlm
FT_LOCALIZED ?= $(OUT)/localized
FT_TOKENIZER ?=
TEXT_MODEL ?= $(OUT)/bert
TEXT_RECIPE ?= $(FT_RECIPE)
WINDOW     ?= --max-length 128 --margin 32
GOLD       ?= $(wildcard $(SHINRA)/annotation/*_dist.jsonl)
# The ENE definitions JSONL (empty: the *definition*.jsonl in SHINRA, if any)
DEFINITIONS ?=
DEFS        = $(if $(DEFINITIONS),--definitions $(DEFINITIONS))
MASKED     ?= 東京大学で[MASK]の研究をしています。
STEPS      ?=
EPOCHS     ?=
LJ         := $(VENV)/bin/layoutja

.PHONY: vocab localize show bert init-model pretrain electra finetune finetune-model finetune-text \
  predict score \
  compare fill-mask plot

# The demo fine-tunes twice (layout-aware and text-only, for `compare`), DEMO_EPOCHS each.
DEMO_EPOCHS ?= 15
demo: setup
	@$(MAKE) --no-print-directory vocab localize show bert init-model pretrain electra finetune \
	  predict score finetune-text compare fill-mask plot EPOCHS=$(or $(EPOCHS),$(DEMO_EPOCHS))
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
	@echo "  shinra-text/        the text-only baseline (the BERT), fine-tuned on the same split"
	@echo "  compare.md          layout-aware vs text-only on the dev pages, by where values sit"
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
	    --config localize/published.yaml $(LOCALIZE_ARGS)

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
# The export in $(OUT)/shinra is the model best on dev; the last one is in $(OUT)/shinra/last.
finetune: setup
	$(LJ) localize $(SHINRA)/html --tokenizer $(or $(FT_TOKENIZER),$(FT_MODEL)) \
	  --out $(FT_LOCALIZED) --quiet $(LOCALIZE_ARGS)
	@$(MAKE) --no-print-directory finetune-model

finetune-model: setup
	$(LJ) finetune --config $(FT_RECIPE) --data $(SHINRA) $(DEFS) --model $(FT_MODEL) \
	  --out $(OUT)/shinra --localized $(FT_LOCALIZED) --resume \
	  $(if $(FT_TOKENIZER),--tokenizer $(FT_TOKENIZER)) $(if $(EPOCHS),--schedule.epochs $(EPOCHS))

# The text-only baseline for `make compare`: TEXT_MODEL (a BERT) on the same pages and split.
finetune-text: setup
	$(LJ) finetune --config $(TEXT_RECIPE) --data $(SHINRA) $(DEFS) --model $(TEXT_MODEL) \
	  --out $(OUT)/shinra-text --localized $(FT_LOCALIZED) --resume --finetune.text_only true \
	  $(if $(FT_TOKENIZER),--tokenizer $(FT_TOKENIZER)) $(if $(EPOCHS),--schedule.epochs $(EPOCHS))

predict: setup
	$(LJ) localize $(SHINRA)/html --tokenizer $(OUT)/shinra --out $(FT_LOCALIZED) --quiet \
	  $(LOCALIZE_ARGS)
	$(LJ) predict --model $(OUT)/shinra --data $(SHINRA) $(DEFS) --out $(OUT)/predictions.jsonl \
	  --localized $(FT_LOCALIZED) $(WINDOW)

score: setup
	$(LJ) score --gold $(GOLD) --pred $(OUT)/predictions.jsonl --html $(SHINRA)/html \
	  --out $(OUT)/score.json | tail -n 4

# What the layout buys: the layout-aware run (CMP_LAYOUT) and the text-only one (CMP_TEXT),
# fine-tuned on the same split, predict its dev pages; both are scored under both conventions,
# per attribute and by where the values sit (infobox, table, list, running text).
CMP_LAYOUT ?= $(OUT)/shinra
CMP_TEXT   ?= $(OUT)/shinra-text
compare: setup
	@cmp -s $(CMP_LAYOUT)/dev_pages.txt $(CMP_TEXT)/dev_pages.txt || \
	  { echo "$(CMP_LAYOUT) and $(CMP_TEXT) were not fine-tuned on the same split"; exit 1; }
	@mkdir -p $(OUT)/compare
	$(LJ) predict --model $(CMP_LAYOUT) --data $(SHINRA) $(DEFS) --localized $(FT_LOCALIZED) \
	  --target $(CMP_LAYOUT)/dev_pages.txt --out $(OUT)/compare/layout.jsonl $(WINDOW)
	$(LJ) predict --model $(CMP_TEXT) --data $(SHINRA) $(DEFS) --localized $(FT_LOCALIZED) \
	  --target $(CMP_LAYOUT)/dev_pages.txt --out $(OUT)/compare/text-only.jsonl $(WINDOW)
	$(LJ) compare --gold $(GOLD) --html $(SHINRA)/html --target $(CMP_LAYOUT)/dev_pages.txt \
	  --pred layout=$(OUT)/compare/layout.jsonl text-only=$(OUT)/compare/text-only.jsonl \
	  --out $(OUT)/compare.md

# --- SHINRA 2022 at full size: the published runs -------------------------------------------
# The training data as downloaded (annotation/<Name>_dist.jsonl, html/<Name>/, plain/<Name>/,
# categories in English) in SHINRA2022, the leaderboard input (html/, plain/, the ENE
# definitions LB_DEFINITIONS, which every step reads, the input JSONL LB_PAGES) in LEADERBOARD, e.g.
#   make shinra2022 SHINRA2022=/data/ene-20221116 LEADERBOARD=/data/attribute_extraction
# LB_SYSTEM chooses a system of a multi-system input; LB_GOLD scores the predictions where the
# leaderboard's gold is given. The published LayoutLM's own tokenizer files are not MeCab:
# FT_TOKENIZER gives the one it was trained with.
SHINRA2022   ?= /data/shinra2022
LEADERBOARD  ?= /data/shinra2022-leaderboard
LB_PAGES     ?= $(firstword $(wildcard $(LEADERBOARD)/*leaderboard*.jsonl))
LB_DEFINITIONS ?= $(firstword $(wildcard $(LEADERBOARD)/*[Dd]efinition*.jsonl))
LB_SYSTEM    ?=
LB_GOLD      ?=
RUN          ?= runs/shinra2022
LAYOUTLM     ?= jri-advtechlab/layoutlm-wikipedia-ja
BERT         ?= cl-tohoku/bert-base-japanese-v2
PUBLISHED_TOKENIZER ?= cl-tohoku/bert-base-japanese-v2
SHINRA2022_RUN := OUT=$(RUN) SHINRA=$(SHINRA2022) FT_LOCALIZED=$(RUN)/localized WINDOW= \
  FT_TOKENIZER=$(PUBLISHED_TOKENIZER) DEFINITIONS=$(LB_DEFINITIONS) \
  GOLD="$(wildcard $(SHINRA2022)/annotation/*_dist.jsonl)"

.PHONY: shinra2022 shinra2022-localize shinra2022-finetune shinra2022-predict shinra2022-score \
  shinra2022-compare
shinra2022: shinra2022-localize shinra2022-finetune shinra2022-predict shinra2022-score \
  shinra2022-compare

shinra2022-localize: setup
	$(LJ) localize $(SHINRA2022)/html --tokenizer $(PUBLISHED_TOKENIZER) --out $(RUN)/localized \
	  $(LOCALIZE_ARGS)
	$(LJ) localize $(LEADERBOARD)/html --tokenizer $(PUBLISHED_TOKENIZER) \
	  --out $(RUN)/leaderboard-localized $(LOCALIZE_ARGS)

# The layout-aware run is $(RUN)/shinra, the text-only one $(RUN)/shinra-text (as `compare` reads).
shinra2022-finetune: setup
	@$(MAKE) --no-print-directory finetune-model finetune-text $(SHINRA2022_RUN) \
	  FT_MODEL=$(LAYOUTLM) FT_RECIPE=train/finetune-shinra.yaml TEXT_MODEL=$(BERT) \
	  TEXT_RECIPE=train/finetune-shinra-bert.yaml

shinra2022-predict: setup
	@for run in shinra shinra-text; do \
	  $(LJ) predict --model $(RUN)/$$run --data $(LEADERBOARD) --pages $(LB_PAGES) \
	    $(if $(LB_DEFINITIONS),--definitions $(LB_DEFINITIONS)) \
	    $(if $(LB_SYSTEM),--system $(LB_SYSTEM)) --localized $(RUN)/leaderboard-localized \
	    --out $(RUN)/leaderboard-$$run.jsonl || exit 1; \
	done

shinra2022-score: setup
	@if [ -z "$(LB_GOLD)" ]; then echo "no LB_GOLD: the leaderboard predictions are not scored"; \
	else for run in shinra shinra-text; do for convention in leaderboard-2022 2019; do \
	  score=$(RUN)/score-$$run-$$convention; \
	  $(LJ) score --convention $$convention --gold $(LB_GOLD) --html $(LEADERBOARD)/html \
	    --pred $(RUN)/leaderboard-$$run.jsonl --out $$score.json > $$score.txt || exit 1; \
	  echo "$$run, $$convention:"; grep '^overall' $$score.txt; \
	done; done; fi

shinra2022-compare: setup
	@$(MAKE) --no-print-directory compare $(SHINRA2022_RUN)

fill-mask: setup
	$(LJ) fill-mask --model $(OUT)/mvlm "$(MASKED)"
	$(LJ) fill-mask --model $(OUT)/electra/generator "$(MASKED)"

plot: setup
	$(LJ) plot $(OUT)/mvlm $(OUT)/shinra --out $(OUT)/loss.png

# Tokenizer speed against transformers' BertJapaneseTokenizer, localization speed against a bare
# Chromium loop, pretraining speed (MVLM, ELECTRA) against HF Trainer, on real Japanese text (Debian's Japanese documentation; installed if missing).
# Boxes against the published localizer's, per geometry: LAYOUTJA_PUBLISHED_REPO=DIR (a checkout
# of nishiwakikazutaka/shinra2022-task2_jrird), else skipped.
BENCH_DOCS := debian-reference-ja developers-reference-ja debian-faq-ja maint-guide-ja \
              debian-policy-ja gimp-help-ja aptitude-doc-ja
bench: setup
	@dpkg -s $(BENCH_DOCS) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BENCH_DOCS) >/dev/null; }
	$(PY) bench/bench_tokenizer.py
	$(PY) bench/bench_localize.py --rounds 2
	$(PY) bench/bench_network_guard.py
	$(PY) bench/bench_geometry.py
	$(PY) bench/bench_pretrain.py
	$(PY) bench/bench_pretrain.py --objectives mvlm,electra --hidden 384

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
