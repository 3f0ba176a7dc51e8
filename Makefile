# The README's two commands are `make book` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
CHAPTERS := $(sort $(wildcard chapters/*.ipynb))
# Kernels and scripts started by jupyter and papermill must find the venv's python first.
export PATH := $(BIN):$(PATH)

.PHONY: book test execute html sync bench assignments clean

book: execute html  ## set up, execute every chapter with papermill, build the HTML book
	@echo
	@echo "The book is built. Open: file://$(CURDIR)/_build/html/index.html"

test: $(STAMP)  ## run every test (unit tests, nbval on every chapter, book build + HTML checks)
	$(BIN)/python -m pytest

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, at the pinned version, so that nothing installed later swaps its build.
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

sync: $(STAMP)  ## write the Colab badges and setup cells from the repository URL in _config.yml
	$(BIN)/python book/sync_links.py

execute: sync  ## re-execute every chapter in place, on the CPU, with default parameters
	for nb in $(CHAPTERS); do \
	  MOE_UTILS_DEVICE=cpu $(BIN)/papermill --cwd chapters -k python3 $$nb $$nb || exit 1; \
	done

html: $(STAMP)  ## build the HTML book from the executed chapters; warnings are errors
	$(BIN)/jupyter-book build . -W -n --keep-going

assignments: $(STAMP)  ## build student and autograder versions of every assignment (otter-grader) in _build/assignments
	$(BIN)/python book/assignments.py

bench: $(STAMP)  ## print the benchmarks (side by side, one run; not timed tests)
	$(BIN)/python -m tests.benchmarks

clean:
	rm -rf _build
