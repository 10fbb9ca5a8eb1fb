"""A model of the CUDA kernels' resources that works without a GPU (issue 22's first,
diagnostic half). Everything it writes is a model, and says so: no GPU ran.

  - compiler facts (compile_facts.py, ptxas_report.py): registers, static shared
    memory, stack frame and spills per kernel instantiation and architecture, from
    ptxas's own report on the shipped build's flags (setup.py's, plus torch's);
  - launch geometry (launch_geometry.py): the grid, block and dynamic shared memory
    of each window_attention launch at a shape, mirroring the host code of
    csrc/cuda/window_attention.cu (tests/ops/test_gpu_model.py compiles that code's
    own formulas and checks the mirror against them);
  - occupancy (cards.py, occupancy.py): blocks and warps resident per SM on the A100,
    H100 SXM and H200 by the CUDA Occupancy Calculator's rules, and which limit binds;
  - floors (floors.py): the bytes an op must move and its FLOPs, and the time floor
    on each card (measured ceilings where a GPU record has them, spec otherwise).

    make gpu-model                      (writes bench/results/model-YYYY-MM-DD/)
    PYTHONPATH=bench python -m gpu_model --help
"""
