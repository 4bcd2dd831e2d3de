# Two commands a user needs: `make demo` (install + compare every mixer) and `make test` (install + pytest).
# Both create .venv on first use and are idempotent.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gkabench-installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: from PyPI this is a CUDA build on a Linux GPU machine; on a CPU machine with
	# the CPU wheel on disk, that wheel. Installing it first stops the rest from pulling another torch.
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/gkabench demo

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV)
