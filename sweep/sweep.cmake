# The ablation-sweep runner (issue 6): sweep files, the runner and its results
# (sweep/sweep_file.h, sweep/sweep.h, sweep/sweep_results.h).
target_sources(rehyat PRIVATE sweep_file.cpp sweep_results.cpp sweep.cpp)
# The compute sweep (sweep/compute_sweep.h): FLOPs tables and per-block latency and memory
# of attention variants.
target_sources(rehyat PRIVATE compute_sweep.cpp)
