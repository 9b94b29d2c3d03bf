# The sweep charts (sweep/plot.h) and their bitmap font (sweep/plot_font.h).
target_sources(rehyat PRIVATE plot.cpp plot_font.cpp)
