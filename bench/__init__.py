"""sssrd's benchmark suite: sssrd against direct loopback, HAProxy and nginx on one machine.

`python -m bench.run` starts every process it measures (fake Lambda, sssrd, origin, peers),
runs the scenarios interleaved, prints a table with ratios and targets, and writes JSON to
bench/results/. Benchmarks, not tests: they time things and nothing here asserts a figure.
"""
