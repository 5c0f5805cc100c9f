# Locates LibTorch inside PyPI's torch wheel (pinned 2.11.0) and the wheel's nvidia-* libraries.
# QTRAIN_PYTHON: the interpreter whose site-packages hold torch (scripts/setup.sh makes a venv).
set(QTRAIN_TORCH_VERSION "2.11.0")
if(NOT QTRAIN_PYTHON)
  if(DEFINED ENV{QTRAIN_VENV})
    set(QTRAIN_PYTHON "$ENV{QTRAIN_VENV}/bin/python3")
  else()
    set(QTRAIN_PYTHON "$ENV{HOME}/.cache/qtrain/venv/bin/python3")
  endif()
endif()
if(NOT EXISTS "${QTRAIN_PYTHON}")
  message(FATAL_ERROR "No Python with the torch wheel at ${QTRAIN_PYTHON}: run scripts/setup.sh "
                      "or pass -DQTRAIN_PYTHON=/path/to/venv/bin/python3")
endif()
execute_process(
  COMMAND "${QTRAIN_PYTHON}" -c
          "import torch,os;print(torch.__version__.split('+')[0]);print(torch.utils.cmake_prefix_path);print(os.path.dirname(os.path.dirname(torch.__file__)))"
  OUTPUT_VARIABLE _torch_out
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "${QTRAIN_PYTHON} cannot import torch: run scripts/setup.sh")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 _torch_version)
list(GET _torch_out 1 _torch_cmake_prefix)
list(GET _torch_out 2 QTRAIN_SITE_PACKAGES)
if(NOT _torch_version STREQUAL QTRAIN_TORCH_VERSION)
  message(FATAL_ERROR "torch ${_torch_version} found, qtrain pins ${QTRAIN_TORCH_VERSION}")
endif()
list(APPEND CMAKE_PREFIX_PATH "${_torch_cmake_prefix}")

# The wheel's CUDA libraries (cuDNN, cuSPARSELt, NCCL, NVSHMEM, the cu13 toolkit pieces) live in
# site-packages/nvidia/*/lib; the binaries find them there at run time through RPATH.
file(GLOB QTRAIN_NVIDIA_LIB_DIRS LIST_DIRECTORIES true "${QTRAIN_SITE_PACKAGES}/nvidia/*/lib")
set(QTRAIN_TORCH_LIB_DIR "${QTRAIN_SITE_PACKAGES}/torch/lib")
# Kernels target Hopper (the GPU machine); set before Caffe2 picks its own list.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "9.0")
endif()
find_package(Torch REQUIRED)
message(STATUS "LibTorch ${_torch_version} from ${_torch_cmake_prefix}")
