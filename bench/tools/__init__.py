"""Side commands: the regression check against a baseline, the GPU check, the benchmark compare."""
