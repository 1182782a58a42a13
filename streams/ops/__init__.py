"""Operating the service: Prometheus metrics, the dashboard, the review queue (web page and CLI)."""
