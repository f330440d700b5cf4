VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean gpu-check examples soak

$(VENV)/.bench: pyproject.toml scripts/bootstrap.sh scripts/constraints.txt
	scripts/bootstrap.sh $(VENV) bench
	touch $@

$(VENV)/.dev: pyproject.toml scripts/bootstrap.sh scripts/constraints.txt
	scripts/bootstrap.sh $(VENV) dev
	touch $@ $(VENV)/.bench

demo: $(VENV)/.bench  ## set up, then run the demo on generated data
	$(VENV)/bin/zcopy-data demo

test: $(VENV)/.dev  ## set up, then lint and run the test suite
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(VENV)/.bench  ## the full benchmark (peers too when installed: pip install 'zcopy-data[bench,peers]')
	$(VENV)/bin/zcopy-data bench --json benchmarks/results/bench.json --plot benchmarks/results/bench.png

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

gpu-check: $(VENV)/.dev  ## on a GPU machine: cuda tests + transfer benchmark, JSON under benchmarks/results
	PYTHON=$(PY) benchmarks/gpu_check.sh benchmarks/results

examples: $(VENV)/.dev  ## run every example on generated data
	for f in examples/numpy_dataloader.py examples/arrow_file.py examples/image_folder.py examples/lightning_fit.py; do \
		$(PY) $$f || exit 1; done
	$(PY) examples/lightning_ddp.py --devices 2

soak:  ## minutes-long soak run: hundreds of epochs with workers, memory and integrity trends (not in CI)
	PYTHONPATH=. $(PY) scripts/soak.py --epochs 300 --report-every 25 --block-every 3
