// The `rehyat` CLI is a set of subcommands, each defined in its own file under tools/
// and registered on the top-level app by main.cpp. A subcommand's callback does the
// work and reports user errors by throwing rehyat::Error (main prints them).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace rehyat::tools {

// "512 B", "1.5 KiB", "2.3 GiB": byte counts in the subcommands' summaries (cmd_inspect.cpp).
std::string human_bytes(uint64_t bytes);

// rehyat inspect FILE [--json] [--values N]: list the tensors of a safetensors or HDF5 file.
void add_inspect_command(CLI::App& app);
// rehyat example OUT [--seed N] [--force]: write a small checkpoint in every dtype.
void add_example_command(CLI::App& app);
// rehyat forward --model M --weights W --inputs IN --out OUT: the parity tool (tools/cmd_forward.cpp).
void add_forward_command(CLI::App& app);
// rehyat flops --model M --frames F --height H --width W [--set k=v] [--json]: analytic FLOPs (tools/cmd_flops.cpp).
void add_flops_command(CLI::App& app);
// rehyat export CKPT --format safetensors|onnx --out FILE [--naming] [--dtype] [--config] (tools/cmd_export.cpp).
void add_export_command(CLI::App& app);
// rehyat run CONFIG [k=v ...] and one subcommand per pipeline stage (tools/cmd_run.cpp).
void add_run_commands(CLI::App& app);
// rehyat sweep FILE [--stages] [--jobs N] [--only V,...] [--force] [--set k=v]: an ablation sweep, or a
// compute sweep for files with a compute: mapping (tools/cmd_sweep.cpp).
void add_sweep_command(CLI::App& app);
// rehyat bench ...: a parent command; each benchmark adds itself as a subcommand of it.
// bench ops: copy/GEMM ceilings and the memory-bound ops (tools/bench_ops.cpp).
void add_bench_ops_command(CLI::App& bench);
// bench attention: softmax attention kernels, full or chunked (tools/bench_attention.cpp).
void add_bench_attention_command(CLI::App& bench);
// bench model: a whole DiT's forward and one block's forward+backward, time and peak memory.
void add_bench_model_command(CLI::App& bench);
// bench memory: recurrent ReHyAt vs full-softmax forward, peak memory and time over video length.
void add_bench_memory_command(CLI::App& bench);
// rehyat launch, rehyat dist-check and bench nccl: the multi-GPU commands (tools/dist_commands.h).
void add_dist_commands(CLI::App& app, CLI::App& bench);

}  // namespace rehyat::tools
