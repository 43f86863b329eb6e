"""Loom's math library: the operations layers use whose results depend on the backend or on
summation order. Layers call these instead of the array module directly, so that deterministic
mode can replace each one in a single place."""
