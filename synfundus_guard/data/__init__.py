"""Image loading, image folders with labels, field-of-view detection and the phantom fundus generator."""
