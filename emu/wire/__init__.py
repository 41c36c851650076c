"""One module per protocol: header offsets as constants, and the small
conversions the slow path needs. Frames are crafted with Scapy on the slow
path; kernels use the same offsets (kernels cannot import emu, so they keep
their own copies; tests check the two agree)."""
