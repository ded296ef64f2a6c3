"""Autoscaling: the scaling policy (pure), a day-long traffic simulator, the controller
loop for clusters without KEDA, and the Kubernetes manifests for the real autoscalers."""
