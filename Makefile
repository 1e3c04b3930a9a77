# Two commands for a fresh machine:
#   make demo   # venv + the toy-world quick start end to end (prepare, extract, stage 1, stage 2, sample, eval)
#   make test   # venv + the test suite
# One knob seeds every stage (stage 1, stage 2, sampling; the toy world itself is fixed), and OUT
# keeps a run apart:  make demo SEED=1 OUT=out/toy-seed1
PY := .venv/bin/python
DATA := data/toy/v2a_instruction.json
SEED ?= 0
OUT ?= out/toy
SAMPLE := $(PY) sample.py --preset=toy --data_json=$(DATA) --split=test --ckpt_dir=$(OUT) --seed=$(SEED)

.PHONY: demo test clean

.venv/installed: requirements.txt constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	touch $@

demo: .venv/installed
	$(PY) data/toy/prepare.py
	$(PY) extract_features.py --preset=toy
	$(PY) stage1_caption.py --preset=toy --seed=$(SEED) --out_dir=$(OUT)
	$(PY) stage2_audio.py --preset=toy --seed=$(SEED) --out_dir=$(OUT) --converter=$(OUT)/stage1.pt
	$(SAMPLE) --name=video_only
	$(SAMPLE) --name=gt_caption --prompt_field=output --save_steps
	$(SAMPLE) --name=self_caption --self_prompt
	$(SAMPLE) --name=swapped_pitch_text --prompt_field=swapped
	$(SAMPLE) --name=negative_pitch --negative_field=swapped
	$(PY) eval.py toy --samples_dir=$(OUT)/samples --out=$(OUT)/eval.json

# the browser test's Chromium (Debian's package) is installed when missing, where we may (as root)
test: .venv/installed
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "could not install chromium: the browser tests will skip"
	$(PY) -m pytest -q tests

clean:
	rm -rf out/toy data/toy/clips data/toy/features data/toy/v2a_instruction.json data/toy/timing.json
