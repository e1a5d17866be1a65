"""Tools around the proxy, never imported by it: the benchmark, test clients,
a weston runner, the two halves as processes (``pair``) and the demo."""
