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

# The main job, end to end on the embedded default data. Each step is a file target, so a
# re-run skips what is done: generate toy-av, align the tiny encoders to the captions, cache
# the features, stage 1, stage 2, evaluate on the test and probe splits, ask about a test clip.
RUNS := $(DEMO_DIR)/runs
TOY := $(DEMO_DIR)/toy-av

demo: install $(RUNS)/stage2/config.json
	$(VLM) eval --model $(RUNS)/stage2 --data $(TOY)/qa/test_questions.json --out $(DEMO_DIR)/eval-test
	$(VLM) eval --model $(RUNS)/stage2 --data $(TOY)/qa/probe_questions.json --out $(DEMO_DIR)/eval-probe
	@echo 'vlm ask $(TOY)/media/toyav-00070.mp4 "what sound is playing?"'
	@$(VLM) ask --model $(RUNS)/stage2 $(TOY)/media/toyav-00070.mp4 "what sound is playing?"

$(TOY)/toy-av.json: | install
	$(VLM) download toy-av --out $(TOY) --clips $(DEMO_CLIPS)

$(RUNS)/encoders/config.json: $(TOY)/toy-av.json
	rm -rf $(RUNS)/encoders
	$(VLM) pretrain tiny-av --stage encoders --data $(TOY)/stage1.json --out $(RUNS)/encoders

$(RUNS)/stage1/config.json: $(RUNS)/encoders/config.json
	$(VLM) preprocess $(TOY)/clips.jsonl --recipe tiny-av --encoders $(RUNS)/encoders
	rm -rf $(RUNS)/stage1
	$(VLM) pretrain tiny-av --encoders $(RUNS)/encoders --data $(TOY)/stage1.json --out $(RUNS)/stage1

$(RUNS)/stage2/config.json: $(RUNS)/stage1/config.json
	rm -rf $(RUNS)/stage2
	$(VLM) tune tiny-av --from $(RUNS)/stage1 --data $(TOY)/stage2.json --out $(RUNS)/stage2

bench: install
	$(PY) bench/cli_help.py
	$(PY) bench/toyav_generate.py
	$(PY) bench/preprocess.py
	$(PY) bench/tiny_av_train.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
