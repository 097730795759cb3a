"""capsbench: Capsule Networks versus max-pooling ConvNets on the claims made for capsules."""

__version__ = "0.1.0"
