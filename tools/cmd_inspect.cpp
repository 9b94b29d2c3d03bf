// `rehyat inspect FILE`: what is in a checkpoint or an HDF5 cache, without writing code.
// The format is detected by content (the HDF5 signature), not by extension; anything
// else is read as safetensors, whose validation names what is wrong. --json prints one
// object for scripts (the Python interop tests read it); --values N adds the first N
// values of each tensor (safetensors only). Tensors are listed in natural name order
// ("blocks.2" before "blocks.10"), not in the order of their bytes in the file.
#include <algorithm>
#include <cctype>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "data/hdf5_file.h"
#include "tools/commands.h"

namespace rehyat::tools {

namespace {

using Json = nlohmann::ordered_json;  // keys in the order written, for people reading --json

struct InspectOptions {
  std::string path;
  bool json = false;
  int64_t value_count = 0;
};

// Compares digit runs as numbers: "blocks.2.x" < "blocks.10.x".
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i_end = i, j_end = j;
      while (i_end < a.size() && std::isdigit(static_cast<unsigned char>(a[i_end]))) ++i_end;
      while (j_end < b.size() && std::isdigit(static_cast<unsigned char>(b[j_end]))) ++j_end;
      std::string_view x(a.data() + i, i_end - i), y(b.data() + j, j_end - j);
      while (x.size() > 1 && x.front() == '0') x.remove_prefix(1);
      while (y.size() > 1 && y.front() == '0') y.remove_prefix(1);
      if (x.size() != y.size()) return x.size() < y.size();
      if (x != y) return x < y;
      i = i_end;
      j = j_end;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

// Integers exactly, floats as doubles.
template <typename T>
Json json_number(T value) {
  if constexpr (std::is_integral_v<T>)
    return int64_t(value);
  else
    return to_double(value);
}

// The first `count` values in memory order.
Json leading_values(const Tensor& tensor, int64_t count) {
  Tensor flat = tensor.reshape({tensor.numel()}).slice(0, 0, std::min(count, tensor.numel())).contiguous();
  Json values = Json::array();
  REHYAT_DISPATCH_ALL(flat.dtype(), "inspect --values", {
    const scalar_t* data = flat.data<scalar_t>();
    for (int64_t i = 0; i < flat.numel(); ++i) values.push_back(json_number(data[i]));
  });
  return values;
}

// "[v0, v1, ...]", with the ellipsis when the tensor holds more than was read.
std::string values_text(const Json& values, int64_t numel) {
  std::vector<std::string> items;
  for (const Json& v : values)
    items.push_back(v.is_number_integer() ? fmt::format("{}", v.get<int64_t>())
                    : v.is_null()         ? std::string("nan")
                                          : fmt::format("{:.6g}", v.get<double>()));
  if (int64_t(items.size()) < numel) items.push_back("...");
  return fmt::format("[{}]", fmt::join(items, ", "));
}

// Columns padded to their widest cell; the last cell of a row is left ragged, so a
// one-cell row (a line of values) does not widen the first column.
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()));
    for (size_t c = 0; c + 1 < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line = " ";
    for (size_t c = 0; c < row.size(); ++c)
      line += c + 1 == row.size() ? " " + row[c] : fmt::format(" {:<{}}", row[c], widths[c]);
    fmt::print("{}\n", line);
  }
}

void inspect_safetensors(const InspectOptions& options) {
  SafetensorsFile file = SafetensorsFile::open(options.path);
  uint64_t total_bytes = 0;
  int64_t total_elements = 0;
  std::vector<std::string> names = file.names();
  std::sort(names.begin(), names.end(), natural_less);
  Json tensors = Json::array();
  for (const std::string& name : names) {
    const SafetensorsTensorInfo& info = file.info(name);
    Json entry = {{"name", name},
                  {"dtype", dtype_name(info.dtype)},
                  {"shape", info.shape},
                  {"numel", shape_numel(info.shape)},
                  {"bytes", info.nbytes()},
                  {"data_offsets", {info.data_begin, info.data_end}}};
    if (options.value_count > 0) entry["values"] = leading_values(file.get(name), options.value_count);
    tensors.push_back(std::move(entry));
    total_bytes += info.nbytes();
    total_elements += shape_numel(info.shape);
  }

  if (options.json) {
    Json out = {{"file", options.path},
                {"format", "safetensors"},
                {"file_bytes", file.file_bytes()},
                {"header_bytes", file.header_bytes()},
                {"metadata", file.metadata()},
                {"tensors", tensors},
                {"total_tensors", tensors.size()},
                {"total_elements", total_elements},
                {"total_bytes", total_bytes}};
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("{}: safetensors, {} tensors, {} ({} header)\n", options.path, tensors.size(),
             human_bytes(file.file_bytes()), human_bytes(file.header_bytes()));
  if (!file.metadata().empty()) {
    fmt::print("metadata:\n");
    for (const auto& [key, value] : file.metadata()) fmt::print("  {}: {}\n", key, value);
  }
  std::vector<std::vector<std::string>> rows = {{"name", "dtype", "shape", "size"}};
  for (const Json& t : tensors) {
    rows.push_back({t["name"].get<std::string>(), t["dtype"].get<std::string>(),
                    shape_str(t["shape"].get<Shape>()), human_bytes(t["bytes"].get<uint64_t>())});
    if (t.contains("values")) rows.push_back({"    " + values_text(t["values"], t["numel"].get<int64_t>())});
  }
  print_table(rows);
  fmt::print("total: {} tensors, {} elements, {}\n", tensors.size(), total_elements, human_bytes(total_bytes));
}

void inspect_hdf5(const InspectOptions& options) {
  REHYAT_CHECK(options.value_count == 0, "{}: --values is supported for safetensors files only", options.path);
  std::vector<Hdf5DatasetInfo> datasets = list_hdf5_datasets(options.path);
  std::sort(datasets.begin(), datasets.end(),
            [](const Hdf5DatasetInfo& a, const Hdf5DatasetInfo& b) { return natural_less(a.path, b.path); });
  uint64_t total_bytes = 0, total_stored = 0;
  int64_t total_elements = 0;
  for (const Hdf5DatasetInfo& d : datasets) {
    total_bytes += d.logical_bytes();
    total_stored += d.storage_bytes;
    total_elements += d.numel();
  }

  if (options.json) {
    Json tensors = Json::array();
    for (const Hdf5DatasetInfo& d : datasets)
      tensors.push_back({{"name", d.path},
                         {"dtype", d.type_name},
                         {"shape", d.shape},
                         {"numel", d.numel()},
                         {"bytes", d.logical_bytes()},
                         {"storage_bytes", d.storage_bytes},
                         {"chunks", d.chunk_shape},
                         {"filters", d.filters}});
    Json out = {{"file", options.path},          {"format", "hdf5"},
                {"tensors", tensors},            {"total_tensors", datasets.size()},
                {"total_elements", total_elements}, {"total_bytes", total_bytes},
                {"total_storage_bytes", total_stored}};
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("{}: HDF5, {} datasets\n", options.path, datasets.size());
  std::vector<std::vector<std::string>> rows = {{"name", "dtype", "shape", "size", "stored", "chunks", "filters"}};
  for (const Hdf5DatasetInfo& d : datasets)
    rows.push_back({d.path, d.type_name, shape_str(d.shape), human_bytes(d.logical_bytes()),
                    human_bytes(d.storage_bytes), d.chunk_shape.empty() ? "-" : shape_str(d.chunk_shape),
                    d.filters.empty() ? "-" : fmt::format("{}", fmt::join(d.filters, ","))});
  print_table(rows);
  fmt::print("total: {} datasets, {} elements, {} ({} stored)\n", datasets.size(), total_elements,
             human_bytes(total_bytes), human_bytes(total_stored));
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* command = app.add_subcommand("inspect", "List the tensors of a safetensors or HDF5 file");
  command->add_option("FILE", options->path, "safetensors or HDF5 file")->required();
  command->add_flag("--json", options->json, "print one JSON object instead of a table");
  command->add_option("--values", options->value_count, "also print the first N values of each tensor")
      ->check(CLI::NonNegativeNumber);
  command->callback([options] {
    if (is_hdf5_file(options->path))
      inspect_hdf5(*options);
    else
      inspect_safetensors(*options);
  });
}

std::string human_bytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = double(bytes);
  size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, kUnits[unit]);
}

}  // namespace rehyat::tools
