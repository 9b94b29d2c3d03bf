# Training core: AdamW, learning-rate schedule, gradient clipping, flow matching, the
# metrics log and training checkpoints.
target_sources(rehyat PRIVATE optimizer.cpp flow_matching.cpp train_log.cpp train_state.cpp)
if(REHYAT_WITH_CUDA)
  target_sources(rehyat PRIVATE optimizer.cu)
endif()
