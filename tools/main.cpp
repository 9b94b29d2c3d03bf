// Entry point of the `rehyat` command-line tool: registers the subcommands and turns
// user errors into "rehyat: error: <message>" on stderr with exit status 1.
#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "core/check.h"
#include "core/device.h"
#include "tools/commands.h"

namespace {

std::string version_text() {
  const int gpus = rehyat::cuda_device_count();
  return fmt::format("rehyat {}\nCUDA: {}, GPUs found: {}", REHYAT_VERSION,
                     rehyat::built_with_cuda() ? "yes" : "no (CPU-only build)", gpus);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rehyat: train ReHyAt hybrid-attention video diffusion transformers", "rehyat"};
  app.set_version_flag("--version", std::function<std::string()>(version_text));
  app.require_subcommand(1);

  // Subcommands, one file each under tools/, declared in tools/commands.h.
  rehyat::tools::add_inspect_command(app);
  rehyat::tools::add_example_command(app);
  rehyat::tools::add_forward_command(app);
  rehyat::tools::add_flops_command(app);
  rehyat::tools::add_run_commands(app);
  rehyat::tools::add_export_command(app);
  rehyat::tools::add_sweep_command(app);
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks on the GPU (tables, optional JSON)");
  bench->require_subcommand(1);
  rehyat::tools::add_bench_ops_command(*bench);
  rehyat::tools::add_bench_attention_command(*bench);
  rehyat::tools::add_bench_model_command(*bench);
  rehyat::tools::add_bench_memory_command(*bench);
  rehyat::tools::add_dist_commands(app, *bench);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {  // rehyat::Error and anything a library let through
    fmt::print(stderr, "rehyat: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
