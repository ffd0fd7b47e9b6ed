"""The learning side of dwell: labels, id maps, backbones, losses, metrics and the daemon."""
