# Multi-GPU runs (issue 7): environment detection, the TCP / shared-file rendezvous and
# control channel, the collective watchdog and the communicator (NCCL when the build has
# it, else the one-rank stub) -- train/dist_env.h, dist_rendezvous.h, dist_watchdog.h,
# dist_comm.h.
target_sources(rehyat PRIVATE dist_env.cpp dist_rendezvous.cpp dist_watchdog.cpp dist_comm.cpp)
