# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
# Both install what they need first, so they work on a fresh machine.
PYTHON ?= python3

.PHONY: install demo test lint bench
install: .installed
.installed: pyproject.toml
	@# A pinned CPU torch first: an unpinned `torch` would pull a multi-GB CUDA build.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev]"
	@touch .installed

demo: install
	$(PYTHON) -m zigma demo

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check src tests benchmarks experiments
	$(PYTHON) -m ruff format --check src tests benchmarks experiments
