# Two commands for a fresh machine:
#   make demo   # venv + the toy-world quick start end to end (prepare, extract, toy LLM, stage 1, stage 2, sample, eval)
#   make test   # venv + the test suite
# One knob seeds every stage (stage 1, stage 2, sampling; the toy world itself is fixed), and OUT
# keeps a run apart:  make demo SEED=1 OUT=out/toy-seed1
PY := .venv/bin/python
DATA := data/toy/v2a_instruction.json
SEED ?= 0
OUT ?= out/toy
SAMPLE := $(PY) tools/sample_split.py --preset=toy --data_json=$(DATA) --split=test --ckpt_dir=$(OUT) --seed=$(SEED)

.PHONY: demo test clean ablations gpu-check samples train-check full-size-check app

# --no-compile: compiling every file of every package at install time was half the install's CPU
# time. Python compiles a module when it is first imported and caches the bytecode, unless
# PYTHONDONTWRITEBYTECODE is set (some CI images and containers set it): then every process compiles
# everything it imports again, about 5 s each. So one import of the stages, allowed to write, fills
# the cache of the modules they use in this venv (docs/toy-tuning.md, "The demo's compute")
.venv/installed: requirements.txt constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements.txt -c constraints.txt
	env -u PYTHONDONTWRITEBYTECODE $(PY) -c "import stage1_caption, stage2_audio, sample, extract_features, eval, tools.sample_split, tools.report"
	touch $@

demo: .venv/installed
	$(PY) data/toy/prepare.py
	$(PY) extract_features.py --preset=toy
	$(PY) data/toy/llm.py --seed=$(SEED) --out=$(OUT)/base_llm
	$(PY) stage1_caption.py --preset=toy --seed=$(SEED) --out_dir=$(OUT) --llm=$(OUT)/base_llm
	$(PY) stage2_audio.py --preset=toy --seed=$(SEED) --out_dir=$(OUT) --converter=$(OUT)/stage1.pt
	$(MAKE) --no-print-directory samples
	$(PY) data/toy/score.py --samples_dir=$(OUT)/samples --out=$(OUT)/eval.json
	$(PY) tools/report.py --samples_dir=$(OUT)/samples --eval_json=$(OUT)/eval.json --out=$(OUT)/report.html

# the demo's sampling modes, one after another (two at a time on one thread each took as long on an idle
# machine: docs/toy-tuning.md, "The demo's compute"); the last edits a range of each clip's own sound
MODES := video_only gt_caption self_caption swapped_pitch_text negative_pitch edit_swapped
video_only_ARGS :=
gt_caption_ARGS := --prompt_field=output --save_steps
self_caption_ARGS := --self_prompt
swapped_pitch_text_ARGS := --prompt_field=swapped
negative_pitch_ARGS := --negative_field=swapped
edit_swapped_ARGS := --edit_field=edit --prompt_field=swapped
samples: $(MODES:%=sample-%)
sample-%: .venv/installed
	$(SAMPLE) --name=$* $($*_ARGS)

# `make ablations`: the paper's ablations in miniature (docs/ablations.md). Each variant of tools/ablations.py
# is trained with the toy's budget into $(OUT)-ablations/<variant> ($(JOBS) at a time, one thread each),
# sampled on the test clips and scored; the table lands in $(OUT)/ablations.md and .json. The toy data
# and $(OUT)/stage1.pt are make demo's when they exist, and are made here when they do not.
#   make ablations VARIANTS=default,vatt-v JOBS=1
FEATURES := data/toy/features
VARIANTS ?=
JOBS ?= 2

$(DATA): | .venv/installed
	$(PY) data/toy/prepare.py
$(FEATURES)/timing.json: | $(DATA)
	$(PY) extract_features.py --preset=toy
$(OUT)/stage1.pt: | $(FEATURES)/timing.json
	$(PY) data/toy/llm.py --seed=$(SEED) --out=$(OUT)/base_llm
	$(PY) stage1_caption.py --preset=toy --seed=$(SEED) --out_dir=$(OUT) --llm=$(OUT)/base_llm

ablations: .venv/installed | $(OUT)/stage1.pt
	$(PY) tools/ablations.py --stage1=$(OUT)/stage1.pt --out_dir=$(OUT)-ablations --table=$(OUT)/ablations.json \
		--seed=$(SEED) --jobs=$(JOBS) --variants=$(VARIANTS)

# `make app`: the browser app (app/app.py) over $(OUT)'s checkpoints, on http://127.0.0.1:7860 (the
# address is printed); Ctrl-C stops it. Its own requirements (Gradio) install on first use; the demo and
# the stages never need them. More flags: make app ARGS="--port 8000 --steps 24"
.venv/app-installed: .venv/installed app/requirements.txt constraints.txt
	$(PY) -m pip install -q --no-compile -r app/requirements.txt -c constraints.txt
	env -u PYTHONDONTWRITEBYTECODE $(PY) -c "import gradio, gradio_client"
	touch $@

app: .venv/app-installed
	$(PY) app/app.py --ckpt_dir=$(OUT) --seed=$(SEED) $(ARGS)

# the browser tests' Chromium (Debian's package) is installed when missing, where we may (as root); the
# app's test needs its requirements
test: .venv/installed .venv/app-installed
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "could not install chromium: the browser tests will skip"
	$(PY) -m pytest -q tests

# `make gpu-check` (a GPU machine, at most 8 minutes): the GPU-only tests, tools/bench.py at gemma-2b in bf16
# (eager and --compile), a shortened toy demo on the GPU; out/gpu-check/result.json, and every GPU
# table written between its <!-- gpu-check:NAME --> markers. Refuses (exit 2) without a GPU.
gpu-check: .venv/installed
	$(PY) tools/gpu_check.py

# `make train-check` (one GPU, at most 5 minutes): both training stages at the paper's size with random
# weights through their own code (gemma-2b presets timed, overfits, 1-rank NCCL DDP, FLOPs against torch's
# counter); out/train-check/result.json and docs/real-scale.md's <!-- train-check:training --> table.
# Refuses (exit 2) without a GPU.
train-check: .venv/installed
	$(PY) tools/train_check.py --size=full

# `make full-size-check` (a CPU, about 6 minutes and 16 GB here): the same code paths at the paper's size, one
# training step of each stage (Gemma-2B with LoRA, VATT Audio over the reloaded Converter) in float32
full-size-check: .venv/installed
	$(PY) tools/train_check.py --size=full --device=cpu

clean:
	rm -rf out/toy out/toy-ablations data/toy/clips data/toy/features data/toy/v2a_instruction.json data/toy/timing.json
