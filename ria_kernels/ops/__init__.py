"""One module per op: Triton kernel, its launcher with input checks, and the torch
reference it must match, side by side."""
