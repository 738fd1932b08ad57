"""The query service: heatmap queries, screenshots and rendered overlays."""
