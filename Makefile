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
	$(VENV)/bin/ruff check layoutja tests bench
	$(VENV)/bin/ruff format --check layoutja tests bench

demo: setup
	@echo "make demo: the end-to-end demo lands with issue 7; the setup above is done."

# Tokenizer speed against transformers' BertJapaneseTokenizer, and localization speed against a
# bare Chromium loop, on real Japanese text (Debian's Japanese documentation; installed if missing).
BENCH_DOCS := debian-reference-ja developers-reference-ja debian-faq-ja maint-guide-ja \
              debian-policy-ja gimp-help-ja
bench: setup
	@dpkg -s $(BENCH_DOCS) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BENCH_DOCS) >/dev/null; }
	$(PY) bench/bench_tokenizer.py
	$(PY) bench/bench_localize.py
	$(PY) bench/bench_pretrain.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
