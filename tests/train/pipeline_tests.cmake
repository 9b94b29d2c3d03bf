# Tests for this area are added here (rehyat_test(name sources...)).

# The pipeline CLI end to end on the CPU: kill-and-resume (teacher, distillation)
# bit-identical to an uninterrupted run, run-folder protection, config errors, and the
# whole quick start (configs/quickstart.yaml) with its report and images.
add_test(NAME pipeline_py COMMAND python3 -m pytest -q -s -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_pipeline.py)
set_tests_properties(pipeline_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1" TIMEOUT 2400)
