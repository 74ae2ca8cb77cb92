"""cgcnn-lab: Crystal Graph Convolutional Neural Networks, done properly."""

__version__ = "0.1.0"
