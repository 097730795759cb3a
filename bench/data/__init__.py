"""Datasets: canonical MNIST, canvas placement, and the generated test sets."""
