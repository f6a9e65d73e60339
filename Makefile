# The two commands of the README: `make demo` (set up, then run the main job on the built-in
# examples) and `make test` (set up, then run the whole test suite). Both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
MTSC := $(VENV)/bin/mtsc
EXAMPLES := $(filter-out examples/resnet_blocks.mtl,$(wildcard examples/*.mtl))

.PHONY: setup demo examples test bench lint clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml scripts/setup.sh
	VENV=$(VENV) ./scripts/setup.sh

demo: setup
	$(MTSC) demo --out runs/demo

examples: setup
	@for model in $(EXAMPLES); do \
		echo "== mtsc build $$model"; \
		$(MTSC) build $$model -o out/$$(basename $$model .mtl) || exit 1; \
	done

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_build.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf out build *.egg-info .pytest_cache
