# Two commands for a fresh machine:
#   make demo   # venv + the toy-world quick start end to end (prepare, extract, stage 1, stage 2, sample, eval)
#   make test   # venv + the test suite
PY := .venv/bin/python
DATA := data/toy/v2a_instruction.json
SAMPLE := $(PY) sample.py --preset=toy --data_json=$(DATA) --split=test

.PHONY: demo test clean

.venv/installed: requirements.txt constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	touch $@

demo: .venv/installed
	$(PY) data/toy/prepare.py
	$(PY) extract_features.py --preset=toy
	$(PY) stage1_caption.py --preset=toy
	$(PY) stage2_audio.py --preset=toy
	$(SAMPLE) --name=video_only
	$(SAMPLE) --name=gt_caption --prompt_field=output
	$(SAMPLE) --name=self_caption --self_prompt
	$(SAMPLE) --name=swapped_pitch_text --prompt_field=swapped
	$(SAMPLE) --name=negative_pitch --negative_field=swapped
	$(PY) eval.py toy

test: .venv/installed
	$(PY) -m pytest -q tests

clean:
	rm -rf out/toy data/toy/clips data/toy/features data/toy/v2a_instruction.json data/toy/timing.json
