# The pipeline: run config and stages (train/pipeline.h).
target_sources(rehyat PRIVATE run_config.cpp pipeline.cpp data_parallel.cpp)
