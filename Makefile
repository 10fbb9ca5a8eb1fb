# Two commands on a fresh machine:  make demo   and   make test
# Both create .venv, install torch and this package (building the C++/CUDA
# extension), then run. Variables: PYTHON (the interpreter that makes the venv),
# LOMAR_CUDA=auto|0|1, TORCH_CUDA_ARCH_LIST, MAX_JOBS (see docs/install.md).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOMAR_CUDA ?= auto
export LOMAR_CUDA

CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh) csrc/sources.txt
VENV_STAMP := $(VENV)/.deps-installed
EXT_STAMP  := $(VENV)/.ext-built

.PHONY: demo demo-detect demo-segment test test-fast pytest cmake-test emulate emulate-quick bench gpu-check info clean

# The main job on an embedded default: every op checked against its reference,
# then a small LoMaR pretrained on the offline photo set (loss curve and logs in
# output/demo_pretrain/) and its reconstructions (the paper's Fig. 5, in
# output/demo_pretrain/reconstruction.png), then linear probes of its encoder and of a
# random-init one on scikit-learn's digits (output/demo_probe*/, comparison in
# output/demo_probe.png).
demo: $(EXT_STAMP)
	$(PY) -m lomar_ops smoke
	$(PY) -m lomar pretrain --config demo_pretrain
	$(PY) -m lomar visualize --checkpoint output/demo_pretrain/checkpoint-last.pt \
		--window-size 5 --mask-ratio 0.75
	$(PY) -m lomar finetune --config demo_probe
	$(PY) -m lomar finetune --config demo_probe checkpoint=null \
		output_dir=output/demo_probe_random
	$(PY) -m lomar report probe output/demo_probe.png \
		pretrained=output/demo_probe random-init=output/demo_probe_random

# Detection: the demo encoder (pretrained by make demo's first step if its
# checkpoint is missing) as a ViTDet backbone of Mask R-CNN on the offline synthetic
# COCO-format set (digits pasted onto photo crops), and a random-init backbone trained
# the same steps; box and mask AP per evaluation of both in output/demo_detect.png.
demo-detect: $(EXT_STAMP)
	test -f output/demo_pretrain/checkpoint-last.pt || \
		$(PY) -m lomar pretrain --config demo_pretrain
	rm -rf output/demo_detect output/demo_detect_random
	$(PY) -m lomar detect --config demo_detect
	$(PY) -m lomar detect --config demo_detect checkpoint=null \
		output_dir=output/demo_detect_random
	$(PY) -m lomar report detect output/demo_detect.png \
		pretrained=output/demo_detect random-init=output/demo_detect_random

# Semantic segmentation: the demo encoder (pretrained as above when its checkpoint is
# missing) as the ViTDet backbone of UperNet on the offline synthetic shapes set
# (textured shapes on photos, 128x128), and a random-init backbone trained the same
# steps; mIoU per evaluation of both in output/demo_segment.png, the last IoU per
# class in output/demo_segment_class_iou.png.
demo-segment: $(EXT_STAMP)
	test -f output/demo_pretrain/checkpoint-last.pt || \
		$(PY) -m lomar pretrain --config demo_pretrain
	rm -rf output/demo_segment output/demo_segment_random
	$(PY) -m lomar segment --config demo_segment
	$(PY) -m lomar segment --config demo_segment checkpoint=null \
		output_dir=output/demo_segment_random
	$(PY) -m lomar report segment output/demo_segment.png \
		pretrained=output/demo_segment random-init=output/demo_segment_random

test: $(EXT_STAMP) cmake-test pytest

# The Python tests, the 25 slowest named at the end.
pytest: $(EXT_STAMP)
	$(PY) -m pytest tests --durations=25

# While you work: the ops, the data path, the models, segmentation's parts and the
# engine's units (not the jobs, builds, docs or benchmarks: make test runs those),
# a few minutes on 2 cores.
FAST_TESTS := tests/ops tests/data tests/models tests/segmentation tests/engine/test_config.py \
	tests/engine/test_schedule.py tests/engine/test_run_log.py tests/engine/test_checkpoint.py \
	tests/project/test_imports.py
test-fast: $(EXT_STAMP)
	$(PY) -m pytest $(FAST_TESTS) -m "not slow" -q

# The same sources built with CMake against libtorch; runs the C++ unit tests.
cmake-test: $(VENV_STAMP)
	$(VENV)/bin/cmake -S . -B build-cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY)) \
		-DLOMAR_CUDA=$(LOMAR_CUDA) -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja)
	$(VENV)/bin/cmake --build build-cmake -j $${MAX_JOBS:-$$(nproc)}
	$(VENV)/bin/ctest --test-dir build-cmake --output-on-failure

# Every CUDA kernel run on the CPU, one thread per CUDA thread, and compared with the
# CPU ops (csrc/tests/cuda_emulation/run.sh); again under ThreadSanitizer (races,
# barrier misuse) and AddressSanitizer + UBSan (out-of-bounds, misaligned accesses);
# then the mutation test (planted faults must be caught). emulate-quick: the CI set,
# under both sanitizers. Builds go to $TMPDIR/lomar_cuda_emulation.
EMULATE := PYTHON=$(abspath $(PY)) csrc/tests/cuda_emulation/run.sh
emulate: $(VENV_STAMP)
	$(EMULATE) --sanitize none
	$(EMULATE) --sanitize thread
	$(EMULATE) --sanitize address
	PYTHON=$(abspath $(PY)) $(PY) csrc/tests/cuda_emulation/mutation_test.py

emulate-quick: $(VENV_STAMP)
	$(EMULATE) --quick --sanitize thread
	$(EMULATE) --quick --sanitize address
	$(EMULATE) --count emulator

# The emulation's traffic counters, a model (docs/design.md): window_attention's quick and
# model cases counted (JSON under $TMPDIR/lomar_emulation_counts, summed up), then the
# inefficiencies planted in copies of the kernel that must move them (4 minutes on 2 cores).
.PHONY: emulate-count
emulate-count: $(VENV_STAMP)
	$(EMULATE) --count window_attention
	$(EMULATE) --planted

# CPU benchmarks (pytest-benchmark); tagged CSV/JSON under bench/results/cpu-latest,
# then the end-to-end throughput comparison at reduced scale (lomar bench --quick), then
# the input pipeline's cost per image, full crops against windows (lomar bench-data).
bench: $(EXT_STAMP)
	LOMAR_BENCH_OUT=bench/results/cpu-latest $(PY) -m pytest bench -q -p no:cacheprovider -o python_files='bench_*.py'
	$(PY) bench/summarize.py bench/results/cpu-latest
	$(PY) -m lomar bench --device cpu --quick --out bench/results/cpu-latest/throughput
	$(PY) -m lomar bench-data --out bench/results/cpu-latest/data

# On a GPU machine (no network: uses the python already there, python3; see docs/gpu.md):
# versions, build, GPU tests, ceilings, op benchmarks, lomar bench, each stage with its
# own time limit, under 10 minutes in all. GPU_CHECK_DRY=1: the same stages on the CPU at
# tiny sizes with this venv's python (CI, after make test), about 2 minutes.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) bench/gpu_check.py

info: $(EXT_STAMP)
	$(PY) -m lomar_ops info

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch>=2.6" torchvision numpy ninja pybind11 "cmake>=3.26" "setuptools>=77" \
		wheel pillow simplejpeg tifffile imagecodecs pyyaml safetensors tensorboard matplotlib scikit-image scikit-learn timm tqdm \
		pytest pytest-benchmark pycocotools openslide-python openslide-bin
	touch $@

$(EXT_STAMP): $(VENV_STAMP) $(CSRC) setup.py
	MAX_JOBS=$${MAX_JOBS:-$$(nproc)} $(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build build-cmake lomar_ops/_C*.so *.egg-info $(EXT_STAMP)

# Every Triton kernel compiled for sm_80 and sm_90 without a GPU, at every launch its
# wrapper makes over the sweep's cases, its float scalars typed fp32 (triton.jit) and
# fp64 (torch.compile's launch), with Triton's own ptxas (registers, spills, shared
# memory; tests/triton_compile_sweep.py): first with this venv's Triton,
# then with the GPU image's (TRITON_GPU_VERSION) in a side venv that takes everything
# else (torch) from this one, created when missing (one pip install of triton,
# ~0.7 GB). SWEEP_JOBS: compiles in parallel (default: the cores).
TRITON_GPU_VERSION ?= 3.6.0
TRITON_SIDE_VENV ?= $(or $(TMPDIR),/tmp)/lomar-triton-$(TRITON_GPU_VERSION)
TRITON_SWEEP = tests/triton_compile_sweep.py --jobs $${SWEEP_JOBS:-$$(nproc)}

.PHONY: triton-compile-check
triton-compile-check: $(VENV_STAMP)
	PYTHONPATH=$(CURDIR) $(PY) $(TRITON_SWEEP)
	test -x $(TRITON_SIDE_VENV)/bin/python || { \
		$(PY) -m venv $(TRITON_SIDE_VENV) && \
		$(TRITON_SIDE_VENV)/bin/python -m pip install -q --no-deps triton==$(TRITON_GPU_VERSION); }
	# torch and the rest from this venv (written every time: the side venv may be older)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(TRITON_SIDE_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz-lomar-main-venv.pth"
	$(TRITON_SIDE_VENV)/bin/python -c "import triton, torch; \
		assert triton.__version__ == '$(TRITON_GPU_VERSION)', triton.__file__; \
		print('side venv: triton', triton.__version__, 'torch', torch.__version__)"
	PYTHONPATH=$(CURDIR) $(TRITON_SIDE_VENV)/bin/python $(TRITON_SWEEP)

# A model of the CUDA kernels' resources that needs no GPU (bench/gpu_model/, docs/gpu.md):
# ptxas's report for csrc/cuda/*.cu, sm_80 and sm_90, with the shipped build's flags
# (cached in build/gpu_model/: a few minutes the first time on 2 cores, seconds after),
# window_attention's launches at the pretraining and fine-tuning shapes, blocks per SM on
# the A100, H100 and H200, and each op's floor; writes bench/results/model-YYYY-MM-DD/
# (model.json, README.md, every table labelled a model) and prints a short table.
.PHONY: gpu-model
gpu-model: $(VENV_STAMP)
	PYTHONPATH=$(CURDIR)/bench $(PY) -m gpu_model
