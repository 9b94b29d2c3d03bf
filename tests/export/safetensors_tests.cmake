# `rehyat export --format safetensors` (issue 6). Included from tests/CMakeLists.txt, which
# defines rehyat_test().
# The description in checkpoint metadata (JSON round trips, malformed metadata, metadata vs
# YAML) and the export of a tiny random hybrid model in both namings and three dtypes.
rehyat_test(test_export_safetensors export/test_export_safetensors.cpp)

# The CLI end to end: a tiny pipeline run writes checkpoints, `rehyat export` turns them into
# files the reference Python safetensors/numpy reader loads with equal values and metadata.
add_test(NAME export_py COMMAND python3 -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_export.py)
set_tests_properties(export_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1" TIMEOUT 600)
