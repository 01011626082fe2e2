"""AA-CLIP's data: synthetic anomaly textures with exact masks, and anomaly data sets on disk."""
