# Training core: optimizer, schedule, clipping, flow matching, metrics log, checkpoints.
rehyat_test(test_train_core train/test_train_core.cpp)
