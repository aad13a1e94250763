"""Ray Serve on Kubernetes with KubeRay: render, apply, inspect and delete the manifests in ``k8s/``."""
