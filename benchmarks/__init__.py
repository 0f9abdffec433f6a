"""Side-by-side benchmarks of rnla against NumPy/SciPy peers (``python -m benchmarks.<name>``)."""
