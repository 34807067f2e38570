"""Model components: image encoders, text encoders and the CLIP model that joins them."""
