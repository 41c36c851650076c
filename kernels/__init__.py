"""numba kernels: pure functions over numpy arrays.

Each module is one table kind or packet operation. A public function checks
dtypes, shapes and ranges (raising ValueError) and calls a private @jit
kernel. This package imports only numpy, numba and the standard library;
never Scapy, never emu. Importing a module compiles nothing: numba compiles
a kernel on its first call (and caches it on disk, see _jit.py).
"""
