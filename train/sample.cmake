# Sampling (Euler / UniPC, classifier-free guidance), PNG/GIF output and the pixel metrics.
target_sources(rehyat PRIVATE sampler.cpp video_io.cpp eval_metrics.cpp)
