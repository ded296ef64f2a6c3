"""Engine backends: one abstract ``Backend``, one module per implementation."""
