# Sourced: the binaries a GPU check needs, as build-tree paths (one list for run_all.sh, which
# builds on the GPU machine, and pack_prebuilt.sh / run_prebuilt.sh, which build here and run there).
#   qtrain_cuda_tests  every test binary with CUDA cases (they skip on a machine without a GPU)
#   qtrain_gpu_tools   the tools and benchmarks the checks run
qtrain_cuda_tests=(tests/quant/test_quant_cuda tests/quant/test_int4_group tests/formats/test_safetensors
  tests/models/test_rope tests/models/test_varlen_attention tests/models/test_activation_offload
  tests/models/test_host_embeddings tests/models/test_quantized_slot_slicing
  tests/peft/test_lora_math tests/trainer/test_chunked_loss tests/trainer/test_embeddings_on_host
  tests/trainer/test_optim_cuda tests/trainer/test_train_cuda)
qtrain_gpu_tools=(tools/qtrain tools/qmem tools/bench/bench_quant_cuda tools/bench/bench_chunked_loss
  tools/bench/bench_optim)
