# Sampling, video output and pixel metrics (train/sampler.h, video_io.h, eval_metrics.h).
rehyat_test(test_sampling train/test_sampling.cpp)
target_compile_definitions(test_sampling PRIVATE REHYAT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
