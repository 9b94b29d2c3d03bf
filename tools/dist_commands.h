// The multi-GPU subcommands (issue 7), registered together by add_dist_commands()
// (tools/commands.h): the one-node launcher, the diagnostic check and the NCCL benchmark.
#pragma once

#include <CLI/CLI.hpp>

namespace rehyat::tools {

// rehyat launch --gpus N [--master-port P] [--grace S] -- <rehyat args...> (tools/cmd_launch.cpp).
void add_launch_command(CLI::App& app);
// rehyat dist-check [--timeout S] [--die-rank R] [--die-signal] [--hang-rank R] [--no-nccl]
// (tools/cmd_dist_check.cpp).
void add_dist_check_command(CLI::App& app);
// rehyat bench nccl [--min-mb A] [--max-mb B] [--dtype T] [--iters N] [--warmup N] [--json FILE]
// (tools/bench_nccl.cpp).
void add_bench_nccl_command(CLI::App& bench);

}  // namespace rehyat::tools
