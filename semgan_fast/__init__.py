"""semgan_fast: exact, fused class-conditional ops and the LGGAN/ECGAN models built on them."""
__version__ = "0.1.0"
