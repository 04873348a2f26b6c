"""vantrack host tools: command line, GPS/NMEA simulator, MicroPython runner, benchmarks."""
