# The sweep charts: layout, bitmap font and the PNGs (sweep/plot.h, sweep/plot_font.h).
rehyat_test(test_plot sweep/test_plot.cpp)
