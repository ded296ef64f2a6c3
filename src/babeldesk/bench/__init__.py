"""Load generator, workloads, batch tuner, cost model, reports and plots (HTTP only)."""
