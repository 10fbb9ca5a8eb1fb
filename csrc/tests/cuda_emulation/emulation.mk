# Builds the emulation checks of run.sh (which sets these variables):
#   ROOT      repository root          CUDA_DIR  where the .cu files are read from
#   OUT       this mode's build folder  REF       the CPU ops' objects (any mode)
#   MODE      none | thread | address   TORCH     torch's package folder
#             | count (traffic counters, count.h)
#   PYTHON    runs emulate_cu.py        PCH       a folder for this mode's prelude.h.gch only
# Targets: $(OUT)/check_<op> for the ops in csrc/cuda/<op>.cu.
HERE := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CXX ?= g++
Q := $(if $(V),,@)  # V=1 shows the commands

# -O1: the emulation runs thousands of threads, not long loops; -g1: source lines in
# sanitizer reports.
# prelude.h is precompiled per mode (its .gch found first on the include path).
PCH ?= $(OUT)/pch
FLAGS := -std=c++20 -O1 -g1 -DLOMAR_WITH_CUDA -Wno-unknown-pragmas -I$(ROOT)/csrc -I$(HERE) \
         -isystem $(TORCH)/include -isystem $(TORCH)/include/torch/csrc/api/include
SANITIZE_none :=
SANITIZE_thread := -fsanitize=thread
SANITIZE_address := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# count: ThreadSanitizer's instrumentation (a call per load and store) without its
# runtime: count_runtime.o takes the calls. No tree SRA, so that a 16-byte copy stays
# one 16-byte access instead of four scalar ones.
SANITIZE_count := -fsanitize=thread --param=tsan-instrument-func-entry-exit=0 -fno-tree-sra -DEMU_COUNT
SANITIZE := $(SANITIZE_$(MODE))
# Its precompiled header is ThreadSanitizer's (GCC takes it with the flags above, and
# run.sh points PCH at the thread mode's: one header precompiled for both).
PCH_SANITIZE := $(if $(filter count,$(MODE)),$(SANITIZE_thread),$(SANITIZE))
LINK_SANITIZE := $(if $(filter count,$(MODE)),,$(SANITIZE))
RUNTIME_count := $(OUT)/count_runtime.o
LIBS := -L$(TORCH)/lib -ltorch -ltorch_cpu -lc10 -Wl,-rpath,$(TORCH)/lib -pthread

# The CPU ops the kernels are compared with: built once, without sanitizers (they are
# the reference, not what is checked).
REF_SOURCES := checks cpu/rpe_gather cpu/window_patchify cpu/mask_substitute \
               cpu/masked_patch_loss cpu/window_attention
REF_OBJECTS := $(REF_SOURCES:%=$(REF)/%.o)

$(REF)/pch/prelude.h.gch: $(HERE)/prelude.h $(HERE)/emulation.mk
	@mkdir -p $(dir $@)
	@echo "  precompile prelude.h"
	$(Q)$(CXX) $(FLAGS) -x c++-header $< -o $@

$(REF)/%.o: $(ROOT)/csrc/%.cpp $(REF)/pch/prelude.h.gch
	@mkdir -p $(dir $@)
	@echo "  compile $(notdir $<) (the CPU op)"
	$(Q)$(CXX) -I$(REF)/pch $(FLAGS) -include prelude.h -Winvalid-pch -MMD -MP -c $< -o $@

$(OUT)/emulator_selftest_emulated.cpp: $(HERE)/emulator_selftest.cu $(HERE)/emulate_cu.py
	@mkdir -p $(OUT)
	$(Q)$(PYTHON) $(HERE)/emulate_cu.py $< $@

$(OUT)/%_emulated.cpp: $(CUDA_DIR)/%.cu $(HERE)/emulate_cu.py
	@mkdir -p $(OUT)
	$(Q)$(PYTHON) $(HERE)/emulate_cu.py $< $@

$(PCH)/prelude.h.gch: $(HERE)/prelude.h $(HERE)/emulation.mk
	@mkdir -p $(PCH)
	@echo "  precompile prelude.h (sanitize=$(MODE))"
	$(Q)$(CXX) $(FLAGS) $(PCH_SANITIZE) -x c++-header $< -o $@

COMPILE_CHECK = @echo "  compile $(notdir $<) (emulated CUDA, sanitize=$(MODE))"; \
  $(CXX) -I$(OUT) -I$(PCH) $(FLAGS) $(SANITIZE) -include prelude.h -Winvalid-pch -MMD -MP -c $< -o $@
$(OUT)/check_%.o: $(HERE)/check_%.cpp $(OUT)/%_emulated.cpp $(PCH)/prelude.h.gch
	$(COMPILE_CHECK)
$(OUT)/check_emulator.o: $(HERE)/check_emulator.cpp $(OUT)/emulator_selftest_emulated.cpp \
                         $(PCH)/prelude.h.gch
	$(COMPILE_CHECK)

$(OUT)/count_runtime.o: $(HERE)/count_runtime.cpp $(HERE)/count.h
	@mkdir -p $(OUT)
	@echo "  compile count_runtime.cpp (the counters)"
	$(Q)$(CXX) -std=c++20 -O2 -g1 -c $< -o $@

$(OUT)/check_%: $(OUT)/check_%.o $(REF_OBJECTS) $(RUNTIME_$(MODE))
	$(Q)$(CXX) $(LINK_SANITIZE) $^ $(LIBS) -o $@

.PRECIOUS: $(OUT)/%_emulated.cpp $(OUT)/check_%.o $(REF)/%.o
-include $(wildcard $(OUT)/*.d $(REF)/*.d $(REF)/cpu/*.d)
