"""Prometheus metric definitions, GPU sampling (NVML), structured logs."""
