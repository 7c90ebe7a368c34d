# vlm: two set-up commands. `make demo` installs into .venv and runs the main job on the built-in
# synthetic toy-av data; `make test` installs and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLM := $(VENV)/bin/vlm
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_CLIPS ?= 1000

.PHONY: install lock test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Install exactly what requirements.lock names (versions and sha256 hashes, made by `make lock`
# from pyproject.toml), then the package itself, editable, without touching its dependencies.
# A registry upload after the lock was made can never change what a fresh machine gets.
# Re-installs when the lock or the package metadata changes.
LOCK := requirements.lock
PIP := $(PY) -m pip --disable-pip-version-check
$(STAMP): $(LOCK) pyproject.toml | $(PY)
	@echo "installing the locked dependencies into $(VENV) (first time: a few minutes, ~4 GB with the CUDA build of torch)" >&2
	$(PIP) install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation --editable .
	$(PIP) check --quiet
	@# An editable install compiles no bytecode (a wheel install does): without it each `vlm`
	@# call where bytecode is never written (PYTHONDONTWRITEBYTECODE, a read-only checkout)
	@# compiles our modules again, ~35 ms of a cached `vlm preprocess`.
	$(PY) -m compileall -q vlm_cli commands
	touch $(STAMP)

install: $(STAMP)

# Regenerate requirements.lock from pyproject.toml (the `test` extra included): every package for
# Linux, macOS and Windows on Python >= 3.11, pinned with hashes, by uv's resolver.
UV_VERSION := 0.13.9
lock: | $(PY)
	$(PIP) install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 \
	  --generate-hashes --custom-compile-command "make lock" --quiet --output-file $(LOCK)

# --durations: the 15 slowest tests, so that a slow suite says where its time goes.
test: install
	$(PY) -m pytest -q --durations=15

# The main job, end to end on the embedded default data. Each step is a file target, so a
# re-run skips what is done: generate toy-av, align the tiny encoders to the captions, cache
# the features, stage 1, stage 2 (LoRA), merge the adapter (verified) and install the model as
# the default ($VLM_HOME/models/tiny-av), evaluate it on the test and probe splits, and ask it
# about a test clip. DEMO_OVERRIDES (recipe KEY=VALUE) shrinks the chain for the test suite.
RUNS := $(DEMO_DIR)/runs
TOY := $(DEMO_DIR)/toy-av
DEMO_RECIPE ?= tiny-av
DEMO_OVERRIDES ?=

demo: install $(RUNS)/installed
	$(VLM) eval --data $(TOY)/qa/test_questions.json --out $(DEMO_DIR)/eval-test
	$(VLM) eval --data $(TOY)/qa/probe_questions.json --out $(DEMO_DIR)/eval-probe
	@clip=$(TOY)/$$($(PY) -c 'import json, sys; print(next(r["video"] for r in map(json.loads, open(sys.argv[1])) if r["split"] == "test"))' $(TOY)/clips.jsonl) && \
	  echo "vlm ask $$clip \"what sound is playing?\"" && $(VLM) ask $$clip "what sound is playing?"

$(TOY)/toy-av.json: | install
	$(VLM) download toy-av --out $(TOY) --clips $(DEMO_CLIPS)

$(RUNS)/encoders/config.json: $(TOY)/toy-av.json
	rm -rf $(RUNS)/encoders
	$(VLM) pretrain $(DEMO_RECIPE) $(DEMO_OVERRIDES) --stage encoders --data $(TOY)/stage1.json --out $(RUNS)/encoders

$(RUNS)/stage1/config.json: $(RUNS)/encoders/config.json
	$(VLM) preprocess $(TOY)/clips.jsonl $(DEMO_OVERRIDES) --recipe $(DEMO_RECIPE) --encoders $(RUNS)/encoders
	rm -rf $(RUNS)/stage1
	$(VLM) pretrain $(DEMO_RECIPE) $(DEMO_OVERRIDES) --encoders $(RUNS)/encoders --data $(TOY)/stage1.json --out $(RUNS)/stage1

$(RUNS)/stage2/config.json: $(RUNS)/stage1/config.json
	rm -rf $(RUNS)/stage2
	$(VLM) tune $(DEMO_RECIPE) $(DEMO_OVERRIDES) --from $(RUNS)/stage1 --data $(TOY)/stage2.json --out $(RUNS)/stage2

# Merge into the run folder, then install a copy under $VLM_HOME/models/tiny-av (rename into
# place, so an interrupted install never leaves half a model there).
$(RUNS)/installed: $(RUNS)/stage2/config.json
	rm -rf $(RUNS)/merged
	$(VLM) merge-lora $(RUNS)/stage2 --out $(RUNS)/merged --verify
	home=$$($(PY) -c 'from vlm_cli.cache import cache_root; print(cache_root() / "models")') && \
	  mkdir -p "$$home" && rm -rf "$$home/.tiny-av.tmp" && cp -r $(RUNS)/merged "$$home/.tiny-av.tmp" && \
	  rm -rf "$$home/tiny-av" && mv "$$home/.tiny-av.tmp" "$$home/tiny-av" && echo "installed $$home/tiny-av"
	touch $(RUNS)/installed

bench: install demo
	$(PY) bench/cli_help.py
	$(PY) bench/toyav_generate.py
	$(PY) bench/preprocess.py
	$(PY) bench/tiny_av_train.py
	$(PY) bench/fsdp_memory.py
	$(PY) bench/demo_steps.py
	$(PY) bench/ask_latency.py --model $(DEMO_DIR)/runs/merged
	$(PY) bench/gpu_ready.py --tiny  # the 7B shape needs a GPU: bench/gpu_ready.py there

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
