# vlm: two set-up commands. `make demo` installs into .venv and runs the main job on the built-in
# synthetic toy-av data; `make test` installs and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLM := $(VENV)/bin/vlm
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_CLIPS ?= 1000

.PHONY: install test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the package metadata changes; the editable install picks up code changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

# The main job, end to end on the embedded default data (steps already done are skipped).
demo: install
	$(VLM) download toy-av --out $(DEMO_DIR)/toy-av --clips $(DEMO_CLIPS)
	$(VLM) preprocess $(DEMO_DIR)/toy-av/clips.jsonl --recipe tiny-av

bench: install
	$(PY) bench/cli_help.py
	$(PY) bench/toyav_generate.py
	$(PY) bench/preprocess.py
	$(PY) bench/tiny_av_train.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
