# Understanding LoRA — the two commands a reader needs are `make book` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY := .venv/bin/python
JB := .venv/bin/jupyter-book
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# The pinned CPU numerics (why each variable is there: see the file). Every target below, and so
# every notebook kernel, test and results check, runs with them.
include scripts/numerics.env

.PHONY: setup book test pytest numerics-check nbval build-check site-check colab-check notebooks \
	results-check results-run solution-checks bench lock clean help

help:
	@echo "make book       set up, then build the site into _build/html"
	@echo "make test       set up, then run pytest, nbval on every notebook, the warnings-as-errors build,"
	@echo "                the offline browser check of that build, and every notebook in a simulated Colab"
	@echo "make colab-check  only the simulated Colab run (bare venv, lorakit from a wheel, downloaded data)"
	@echo "make notebooks  re-execute the notebooks in place (regenerates stored outputs; NB=path for one)"
	@echo "make nbval      compare every notebook's stored outputs with a fresh run (NB=path for one)"
	@echo "make results-run EXPERIMENT=module:NAME  create or resume one stored full-scale result"
	@echo "make solution-checks  print every number the exercise solutions quote (NB=01 for one)"
	@echo "make bench      benchmark LoRA vs full fine-tuning vs peft, and K replicas vs K runs (JSON in bench-results/; the end-to-end one in lorakit/book/results/ch14_bench_e2e.json)"
	@echo "make lock       re-resolve requirements/requirements.in into requirements/lock.txt"

setup:
	@bash scripts/setup.sh

book: setup
	$(JB) build . --path-output . --all

# Every stage runs even after one fails; the summary at the end lists them all.
TEST_STAGES := pytest nbval results-check build-check site-check colab-check
test: setup
	@bash scripts/run_stages.sh $(TEST_STAGES)

# The browser test needs the built site: it runs in site-check, after build-check built it once.
# lorakit's unit tests, and every "Example:" in its docstrings run as a doctest.
pytest:
	$(PY) -m pytest -q tests --ignore=tests/test_site.py --ignore=tests/test_colab.py --doctest-modules lorakit

# Fails in seconds, with the reason, if a kernel would run without the pinned numerics; on a CPU
# that cannot run them (not x86-64, or no AVX2) it says in one line why numbers may differ.
numerics-check:
	@$(PY) scripts/check_numerics.py

nbval: numerics-check
	$(PY) -m pytest -q -p no:randomly --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg $(if $(NB),$(NB),$(NOTEBOOKS))

# Re-runs a fixed random sample of every stored full-scale result and fails if one does not
# reproduce exactly under the pinned numerics. They live inside the package so that a wheel
# (Colab) carries them.
RESULTS_DIR := lorakit/book/results
results-check:
	$(PY) -m lorakit.results --dir $(RESULTS_DIR) verify --all

# Create or resume one stored experiment, e.g. EXPERIMENT=lorakit.book.adaptation:ADAPTATION
# (WORKERS=N processes, one thread each; SCHEDULER=tcp://host:8786 runs it on a Dask cluster).
results-run: setup
	$(PY) -m lorakit.results --dir $(RESULTS_DIR) run $(EXPERIMENT) --workers $(or $(WORKERS),1) \
	  $(if $(SCHEDULER),--scheduler $(SCHEDULER))

build-check:
	rm -rf _build/html _build/.doctrees
	$(JB) build . --path-output . --all -W -n --keep-going

site-check:
	SITE_HTML=_build/html $(PY) -m pytest -q tests/test_site.py

# The simulated Colab run (a bare venv, lorakit installed by each notebook's setup cell, data from the
# download path, every figure audited for a title and axis labels).
colab-check: setup
	$(PY) -m pytest -q tests/test_colab.py

notebooks: setup
	$(PY) scripts/execute_notebooks.py $(if $(NB),$(NB),$(NOTEBOOKS))

solution-checks: setup
	for script in scripts/solution_checks/$(if $(NB),$(NB),[0-9][0-9])_check.py; do \
	  echo "== $$script"; $(PY) $$script; done

bench: setup
	$(PY) -m lorakit.book.bench --ablations
	$(PY) -m lorakit.book.bench_e2e
	$(PY) -m lorakit.book.replicas_bench

lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q $$(grep -E '^torch==' requirements/lock.txt)
	.lock-venv/bin/pip install -q -r requirements/requirements.in setuptools wheel
	{ head -2 requirements/lock.txt; .lock-venv/bin/pip freeze --all --exclude-editable \
	  | grep -vE '^(pip)==' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > requirements/lock.new
	mv requirements/lock.new requirements/lock.txt && rm -rf .lock-venv

clean:
	rm -rf _build
